"""Produce a record whose header *name* is not UTF-8, through librdkafka's C API.

confluent-kafka's Python `produce` encodes header names as UTF-8 text, so it cannot send
such a record; producers in other languages (C, Go) can, and the worker must cope. This
calls the librdkafka bundled with confluent-kafka through ctypes: ``rd_kafka_produceva``
takes its arguments as an array of ``rd_kafka_vu_t``, so no variadic call is needed.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import confluent_kafka

# rd_kafka_vtype_t (rdkafka.h)
_VTYPE_END, _VTYPE_TOPIC, _VTYPE_VALUE, _VTYPE_KEY, _VTYPE_HEADER = 0, 1, 4, 5, 9


class _Mem(ctypes.Structure):
    _fields_ = (("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t))


class _Header(ctypes.Structure):
    _fields_ = (("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t))


class _Union(ctypes.Union):
    _fields_ = (
        ("cstr", ctypes.c_char_p),
        ("mem", _Mem),
        ("header", _Header),
        ("_pad", ctypes.c_char * 64),
    )


class _Vu(ctypes.Structure):
    _fields_ = (("vtype", ctypes.c_int), ("u", _Union))


def _library() -> ctypes.CDLL:
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    (path,) = libs.glob("librdkafka*.so*")
    lib = ctypes.CDLL(str(path))
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = (
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
    )  # fmt: skip
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = (ctypes.c_void_p, ctypes.POINTER(_Vu), ctypes.c_size_t)
    lib.rd_kafka_error_string.restype = ctypes.c_char_p
    lib.rd_kafka_error_string.argtypes = (ctypes.c_void_p,)
    lib.rd_kafka_flush.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.rd_kafka_outq_len.argtypes = (ctypes.c_void_p,)
    lib.rd_kafka_destroy.argtypes = (ctypes.c_void_p,)
    return lib


def produce_with_raw_header(
    bootstrap: str, topic: str, key: bytes, value: bytes, header_name: bytes, header_value: bytes
) -> None:
    """Produce one record with one header whose name is the raw bytes `header_name`."""
    lib = _library()
    errstr = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    if lib.rd_kafka_conf_set(conf, b"bootstrap.servers", bootstrap.encode(), errstr, 512) != 0:
        raise RuntimeError(errstr.value.decode())
    producer = lib.rd_kafka_new(0, conf, errstr, 512)  # RD_KAFKA_PRODUCER
    if not producer:
        raise RuntimeError(errstr.value.decode())
    keep = [ctypes.create_string_buffer(b, len(b)) for b in (key, value, header_value)]
    vus = (_Vu * 5)()
    vus[0].vtype, vus[0].u.cstr = _VTYPE_TOPIC, topic.encode()
    vus[1].vtype, vus[1].u.mem = _VTYPE_KEY, _Mem(ctypes.cast(keep[0], ctypes.c_void_p), len(key))
    vus[2].vtype = _VTYPE_VALUE
    vus[2].u.mem = _Mem(ctypes.cast(keep[1], ctypes.c_void_p), len(value))
    vus[3].vtype = _VTYPE_HEADER
    vus[3].u.header = _Header(header_name, ctypes.cast(keep[2], ctypes.c_void_p), len(header_value))
    vus[4].vtype = _VTYPE_END
    try:
        error = lib.rd_kafka_produceva(producer, vus, 4)
        if error:
            raise RuntimeError(lib.rd_kafka_error_string(error).decode())
        lib.rd_kafka_flush(producer, 30_000)
        if lib.rd_kafka_outq_len(producer) != 0:
            raise RuntimeError(f"the record to {topic} was not delivered within 30 s")
    finally:
        lib.rd_kafka_destroy(producer)
