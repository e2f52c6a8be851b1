"""IPython / Jupyter kernels: count what cells import, not the kernel itself."""

from __future__ import annotations

import os

from popcon_site import _bootstrap, _config


def exclude_kernel_machinery() -> None:
    """Called from the IPython startup file; a no-op unless reporting is enabled.

    Activates reporting if the start-up hook did not (``python -S``, or a kernel
    started before the hook was installed), then makes everything loaded so
    far (the kernel) baseline.
    """
    if not _config.is_true(os.environ.get(_config.ENV_ENABLE)):
        return
    if _bootstrap.activate():
        session = _bootstrap.current()
        if session is not None:
            session.forget_inherited()
