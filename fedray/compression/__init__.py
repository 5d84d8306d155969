"""Update codecs: a client's flat float32 update to real wire bytes and back.

The byte count charged to the network is ``len(payload)``. Each codec family has its own module,
whose docstring gives the paper, the equation and the exact wire format:

=========  =================================  =====================================
name       options                            module
=========  =================================  =====================================
none       —                                  :mod:`~fedray.compression.floats`
fp16       —                                  :mod:`~fedray.compression.floats`
bf16       —                                  :mod:`~fedray.compression.floats`
int8       chunk_size                         :mod:`~fedray.compression.int8`
qsgd       levels, bucket_size                :mod:`~fedray.compression.qsgd`
topk       fraction | k, error_feedback       :mod:`~fedray.compression.sparse`
randk      fraction | k                       :mod:`~fedray.compression.sparse`
signsgd    error_feedback                     :mod:`~fedray.compression.sign`
=========  =================================  =====================================

Example::

    codec = make_codec({"name": "topk", "fraction": 0.01, "error_feedback": True})
    payload, residual = encode_with_feedback(codec, update, segments, rng, residual)
    upload_bytes = len(payload)
    delta = codec.decode(payload, segments)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fedray.compression.base import CODEC_IDS, HEADER_BYTES, Codec, CodecOptionError
from fedray.compression.feedback import encode_with_feedback
from fedray.compression.floats import Bf16Codec, Fp16Codec, NoneCodec
from fedray.compression.int8 import Int8Codec
from fedray.compression.qsgd import QsgdCodec
from fedray.compression.sign import SignSgdCodec
from fedray.compression.sparse import RandKCodec, TopKCodec

CODECS: dict[str, type] = {
    cls.name: cls
    for cls in (
        NoneCodec,
        Fp16Codec,
        Bf16Codec,
        Int8Codec,
        QsgdCodec,
        TopKCodec,
        RandKCodec,
        SignSgdCodec,
    )
}
assert CODECS.keys() == CODEC_IDS.keys()

__all__ = [
    "CODECS",
    "HEADER_BYTES",
    "Bf16Codec",
    "Codec",
    "CodecOptionError",
    "Fp16Codec",
    "Int8Codec",
    "NoneCodec",
    "QsgdCodec",
    "RandKCodec",
    "SignSgdCodec",
    "TopKCodec",
    "encode_with_feedback",
    "make_codec",
]


def _options(spec) -> dict:
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, Mapping):
        return dict(spec)
    # A config object (pydantic model or dataclass) usually carries every codec's options with
    # None for the unused ones; None means "not given" there.
    if hasattr(spec, "model_dump"):
        return spec.model_dump(exclude_none=True)
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return {k: v for k, v in dataclasses.asdict(spec).items() if v is not None}
    raise CodecOptionError(
        f"a codec spec must be a name, a mapping or a config object, got {type(spec).__name__}"
    )


def make_codec(spec) -> Codec:
    """A codec from ``{"name": ..., **options}``, a bare name, or a dataclass/pydantic spec.

    Raises :class:`CodecOptionError` (a ``ValueError``) naming the option, the bad value and what
    is accepted.

    >>> make_codec({"name": "qsgd", "levels": 7}).level_bits
    3
    """
    options = _options(spec)
    name = options.pop("name", None)
    if not isinstance(name, str) or name not in CODECS:
        raise CodecOptionError(f"codec name must be one of {', '.join(CODECS)}; got {name!r}")
    cls = CODECS[name]
    accepted = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CodecOptionError(
            f"{name} has no option {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted) if accepted else 'none'}"
        )
    return cls(**options)
