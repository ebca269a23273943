"""What GPUs this machine has, asked once (pycuda, imported here only): the flow stage, the backends, doctor and
the tests all go through this probe."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def cuda_devices() -> tuple[tuple[str, ...], str | None]:
    """The one probe of this machine's GPUs (the flow stage, the backends, doctor and the tests ask it): the CUDA
    devices pycuda sees, as ``NAME (sm_XY)``, and why there are none (None when there are)."""
    try:
        import pycuda.driver as drv
    except (ImportError, OSError):
        return (), "pycuda is not installed (pip install 'edge-mer[jetson]' on a machine with the CUDA toolkit)"
    try:
        drv.init()
        names = tuple(f"{drv.Device(i).name()} (sm_{''.join(map(str, drv.Device(i).compute_capability()))})"
                      for i in range(drv.Device.count()))
    except drv.Error as exc:
        return (), f"the CUDA driver found no usable device ({str(exc).strip()})"
    return names, None if names else "no CUDA device found"


def cuda_unavailable() -> str | None:
    """Why the CUDA stage cannot run here, or None when pycuda sees a CUDA device."""
    return cuda_devices()[1]
