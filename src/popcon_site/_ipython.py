"""IPython / Jupyter kernels: count what cells import, not the kernel itself."""

import os

import popcon_site


def exclude_kernel_machinery(shell: object = None) -> None:
    """Called from the IPython startup file; a no-op unless reporting is enabled.

    Activates reporting if the start-up hook did not (``python -S``, or a kernel
    started before popcon-site was installed), then makes everything loaded so
    far (the kernel's own machinery) baseline, and its distributions too, so
    the submodules IPython or ipykernel import later never count; a cell's
    ``import dateutil.parser`` does not count when the kernel uses dateutil.
    With ``shell`` (the startup file's ``get_ipython()``), what each cell
    imported is sent right after it, so a kernel killed later has lost nothing.
    """
    if not popcon_site.is_true(os.environ.get(popcon_site.ENV_ENABLE)):
        return
    if popcon_site.activate():
        session = popcon_site.current()
        if session is not None:
            session.exclude_host_distributions()
            events = getattr(shell, "events", None)
            if events is not None:
                events.register("post_run_cell", after_cell)


def after_cell(result: object = None) -> None:
    """IPython's post_run_cell event: a checkpoint, whatever the clock says."""
    popcon_site._checkpoint_due("cell")
