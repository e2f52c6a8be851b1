"""Jupyter servers: the server process itself never reports (docs/configuration.md).

A Jupyter server (``jupyterhub-singleuser``, ``jupyter-lab``, ``jupyter-server``) is the
hub's machinery, not a user's program: counting the ~76 distributions it loads at every
start diluted every share and inflated requests, pyyaml and python-dateutil.  The wheel
enables this module as a server extension (``etc/jupyter/jupyter_server_config.d/``),
so every Jupyter server of the environment calls ``stop_reporting()`` while it starts,
before its first checkpoint is due (10 s).  Its children are processes of their own and
report as usual: kernels (the user's code, ``_ipython``) and what a terminal runs.
"""

import popcon_site


def _jupyter_server_extension_points() -> "list[dict[str, str]]":
    return [{"module": "popcon_site._jupyter_server"}]


def _load_jupyter_server_extension(serverapp: object = None) -> None:
    # Never raises: stop_reporting() only sets two fields, and a no-op when not reporting.
    try:
        popcon_site.stop_reporting()
    except Exception:
        pass
