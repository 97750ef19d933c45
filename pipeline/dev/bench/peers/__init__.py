"""The benchmark's contenders other than the worker: small standalone consumer programs.

Each is run as ``python -m pipeline.dev.bench.peers.<name> --bootstrap ... --input ...
--output ... --group ... --count N`` (see `pipeline.dev.bench.peers.common`), reads the same
feature events, and commits an input offset only after the output it produced has been
delivered (at-least-once). `relay` is a ceiling (no decoding, no model); `naive`,
`faust_agent` and `quix_app` do the worker's job: decode, predict, publish.
"""
