# Installed by popcon-site into {sys.prefix}/etc/ipython/startup/, which IPython
# runs in every profile.  Tells the kernel's own machinery (IPython, ipykernel and
# what they require) from the user's code (cells, the user's startup files), so only
# what the user's code imports counts, and what a cell imported is sent after it.
# Does nothing unless PYTHON_POPCONTEST_ENABLE is true.
try:
    from popcon_site._ipython import exclude_kernel_machinery as _popcon_site_startup

    _popcon_site_startup(get_ipython())  # type: ignore[name-defined]  # noqa: F821
    del _popcon_site_startup
except Exception:
    pass
