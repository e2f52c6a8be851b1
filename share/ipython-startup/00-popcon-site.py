# Installed by popcon-site into {sys.prefix}/etc/ipython/startup/, which IPython
# runs in every profile.  The kernel's own machinery (IPython, ipykernel, zmq,
# tornado...) is loaded by now: it becomes baseline, so only what cells import
# counts, and what a cell imported is sent after it.  Does nothing unless
# PYTHON_POPCONTEST_ENABLE is true.
try:
    from popcon_site._ipython import exclude_kernel_machinery as _popcon_site_startup

    _popcon_site_startup(get_ipython())  # type: ignore[name-defined]  # noqa: F821
    del _popcon_site_startup
except Exception:
    pass
