"""Error feedback: whatever a biased codec dropped this round is added to the next round's update.

Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with Memory"; Karimireddy et al. 2019, "Error
Feedback Fixes SignSGD and other Gradient Compression Schemes". With e_0 = 0::

    c_t = u_t + e_{t−1},   payload_t = encode(c_t),   e_t = c_t − decode(payload_t)

so Σ_{t≤T} decode(payload_t) + e_T = Σ_{t≤T} u_t: nothing is lost, only delayed. The residual e
is per-client state; keeping it between rounds (e.g. in
:class:`fedray.clients.state_store.ClientStateStore`) is the caller's job.
"""

from __future__ import annotations

import numpy as np

from fedray.compression.base import Codec, as_update


def encode_with_feedback(
    codec: Codec,
    update: np.ndarray,
    segments: tuple[int, ...],
    rng: np.random.Generator,
    residual: np.ndarray | None,
) -> tuple[bytes, np.ndarray | None]:
    """``(payload, new residual)``; ``residual=None`` means a client's first round (e = 0).

    A codec without error feedback is encoded as is and returns ``None`` for the residual; passing
    it a residual is an error, since that state would silently be thrown away.
    """
    if not codec.uses_error_feedback:
        if residual is not None:
            raise ValueError(f"{codec.name} does not use error feedback but was given a residual")
        return codec.encode(update, segments, rng), None
    corrected = as_update(update)
    if residual is not None:
        if np.shape(residual) != corrected.shape:
            raise ValueError(
                f"residual has shape {np.shape(residual)}, update has shape {corrected.shape}"
            )
        corrected = corrected + np.asarray(residual, dtype=np.float32)
    payload = codec.encode(corrected, segments, rng)
    # Decoding again costs one more pass, but it is the only way to know exactly what was sent.
    return payload, corrected - codec.decode(payload, segments)
