"""`pipeline models import | list | show | validate | examples`: the model store's command
line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.importer.examples import copy_examples
from pipeline.importer.importing import import_model
from pipeline.importer.inventory import VersionCheck, VersionInfo, list_models, show_model, validate
from pipeline.importer.parity import DEFAULT_TOLERANCE
from pipeline.importer.source import SourceOptions
from pipeline.importer.sources import FRAMEWORKS

__all__ = ["add_models_parser"]

_IMPORT_HELP = """\
Convert a model to ONNX and add it to the store as a new version, after checking that
the conversion predicts what the original predicts (parity). Sources: a TensorFlow
SavedModel directory, a Keras .keras file, a scikit-learn estimator or pipeline saved
with joblib or pickle (.joblib, .pkl, .pickle), an XGBoost model (.json, .ubj) or a
LightGBM text model (.txt). WARNING: loading a pickle or joblib file runs any code it
contains; such files are refused unless --trust-pickle says you trust their origin.
Needs the extra of the framework: pip install '.[tensorflow]' in the project's
checkout (or [sklearn], [boosting], [import] for all three)."""


def add_models_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pipeline models` and its five subcommands to the subcommands."""
    models = sub.add_parser(
        "models",
        help="import, list, show and validate models",
        description="Manage the model store: import a TensorFlow, scikit-learn, XGBoost or "
        "LightGBM model as ONNX, list and show versions, validate them as the worker loads "
        "them.",
    )
    commands = models.add_subparsers(dest="models_command", required=True)
    _add_import(commands)
    listing = commands.add_parser("list", help="every version of every model in the store")
    listing.set_defaults(handler=_list)
    show = commands.add_parser("show", help="each version of one model, with its manifest")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(handler=_show)
    check = commands.add_parser(
        "validate",
        help="load every version as the worker does (checksum, session, warm-up); "
        "exit 1 if any fails",
    )
    check.add_argument("name", metavar="NAME", nargs="?", help="only this model")
    check.set_defaults(handler=_validate)
    for parser in (listing, show, check):
        _add_common(parser)
    examples = commands.add_parser(
        "examples",
        help="copy the example models into DIR (a new or existing store)",
        description="Copy the example models that ship with the package into the model store "
        "DIR, made if missing; versions DIR already has are kept. For an installed tool "
        "without the checkout: then pass --models DIR to run, serve and models.",
    )
    examples.add_argument("dir", type=Path, metavar="DIR", help="the model store to copy into")
    examples.set_defaults(handler=_examples)


def _add_common(parser: argparse.ArgumentParser) -> None:
    """--models and --json, which every subcommand takes."""
    parser.add_argument(
        "--models", type=Path, default=Path("models"), metavar="DIR",
        help="model store directory (default: models)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_import(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`pipeline models import SRC --name N ...`."""
    parser = commands.add_parser(
        "import", help="convert a model to ONNX and add it as a new version",
        description=_IMPORT_HELP,
    )  # fmt: skip
    add = parser.add_argument
    add("source", type=Path, metavar="SRC", help="the model file or SavedModel directory")
    add("--name", required=True, help="the model's name in the store")
    add("--version", help="the new version (default: the next integer)")
    add("--framework", choices=FRAMEWORKS, help="instead of guessing from SRC")
    add("--tag", default="serve", help="SavedModel tag set (default: serve)")
    add("--signature", default="serving_default", help="SavedModel signature to convert")
    add("--trust-pickle", action="store_true", help="allow loading a pickle: it runs code")
    add("--labels", type=_names, help="class labels in probability-column order (a,b,...)")
    add(
        "--features",
        type=_names,
        help="feature names in input order (a,b,...); a text pipeline's input name",
    )
    add("--sample", type=Path, metavar="FILE", help="parity rows: JSON lines or CSV")
    add(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE,
        help=f"largest float difference, relative above 1 and absolute below "
        f"(default: {DEFAULT_TOLERANCE:g}); labels must be equal",
    )  # fmt: skip
    _add_common(parser)
    parser.set_defaults(handler=_import)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _import(args: argparse.Namespace) -> int:
    options = SourceOptions(
        framework=args.framework,
        tag=args.tag,
        signature=args.signature,
        trust_pickle=args.trust_pickle,
        labels=args.labels,
        feature_names=args.features,
    )
    result = import_model(
        args.source, name=args.name, models=args.models, version=args.version,
        options=options, sample=args.sample, tolerance=args.tolerance,
    )  # fmt: skip
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        payload = {"name": result.name, "version": result.version, "path": str(result.path)}
        print(json.dumps({**payload, "manifest": result.manifest}, indent=2))
    else:
        print("\n".join(result.describe()))
    return 0


def _list(args: argparse.Namespace) -> int:
    _print_infos(list_models(args.models), as_json=args.json)
    return 0


def _show(args: argparse.Namespace) -> int:
    infos = show_model(args.models, args.name)
    if args.json:
        print(json.dumps([i.to_json() for i in infos], indent=2))
        return 0
    for info in infos:
        latest = " (latest)" if info.latest else ""
        pinned = " (pinned: events and requests without a version get it)" if info.pinned else ""
        print(f"{info.name} version {info.version}{latest}{pinned}")
        body = info.manifest if info.manifest is not None else {"error": info.error}
        print("\n".join(f"  {k}: {json.dumps(v)}" for k, v in body.items()) or "  no manifest")
    return 0


def _examples(args: argparse.Namespace) -> int:
    copied = copy_examples(args.dir)
    for c in copied:
        what = "copied to" if c.copied else "kept (already there):"
        print(f"{c.name} version {c.version} {what} {c.path}")
    store = args.dir.resolve()
    print(f"use them with --models {store}, e.g. pipeline models list --models {store}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    checks = validate(args.models, args.name)
    if args.json:
        print(json.dumps([c.to_json() for c in checks], indent=2))
    else:
        print(_table(_check_rows(checks)))
    failed = [c for c in checks if not c.ok]
    for check in failed:
        print(f"error: {check.name} version {check.version}: {check.error}", file=sys.stderr)
    return 1 if failed else 0


def _print_infos(infos: Sequence[VersionInfo], *, as_json: bool) -> None:
    """The listing as JSON or a table."""
    if as_json:
        print(json.dumps([i.to_json() for i in infos], indent=2))
        return
    header = ("MODEL", "VERSION", "LATEST", "PINNED", "FEATURES", "SOURCE", "CONVERTER", "PARITY")
    print(_table([header, *(_info_row(i) for i in infos)]))


def _info_row(info: VersionInfo) -> tuple[str, ...]:
    """One table row for a version, from its manifest."""
    manifest = info.manifest or {}
    features = _width(manifest)
    source = _record(manifest, "source", "framework", "framework_version")
    converter = _record(manifest, "converter", "name", "version")
    parity = manifest.get("parity")
    worst = parity.get("max_difference") if isinstance(parity, dict) else None
    return (
        info.name,
        info.version,
        "*" if info.latest else "",
        "*" if info.pinned else "",
        features if info.error is None else "invalid manifest",
        source,
        converter,
        f"{worst:.2g}" if isinstance(worst, float | int) else "-",
    )


def _width(manifest: dict[str, object]) -> str:
    """A vector model's column count, else how many named inputs it takes ("4 inputs")."""
    width, names, inputs = (manifest.get(k) for k in ("n_features", "features", "inputs"))
    if isinstance(width, int):
        return str(width)
    if isinstance(names, list):
        return str(len(names))
    return f"{len(inputs)} inputs" if isinstance(inputs, list) else "?"


def _record(manifest: dict[str, object], key: str, *fields: str) -> str:
    """Join a few fields of a manifest record ("-" if it has none)."""
    record = manifest.get(key)
    if not isinstance(record, dict):
        return "-"
    return " ".join(str(record.get(f, "?")) for f in fields)


def _check_rows(checks: Sequence[VersionCheck]) -> list[tuple[str, ...]]:
    """The validation table: a header and one row a version."""
    rows: list[tuple[str, ...]] = [("MODEL", "VERSION", "RESULT", "CHECKSUM", "LOAD MS", "ERROR")]
    for c in checks:
        error = (c.error or "")[:80]
        result = "ok" if c.ok else "FAILED"
        rows.append((c.name, c.version, result, c.checksum, f"{c.load_ms:.0f}", error))
    return rows


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
