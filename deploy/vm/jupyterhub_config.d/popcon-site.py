# jupyterhub_config.py snippet (TLJH: /opt/tljh/config/jupyterhub_config.d/popcon-site.py).
# JupyterHub passes only the variables in Spawner.env_keep on to single-user servers;
# the hub itself gets them from /etc/popcon-site/env (systemd/jupyterhub.service.d).
c = get_config()  # noqa: F821
c.Spawner.env_keep.extend(
    [
        "PYTHON_POPCONTEST_ENABLE",
        "PYTHON_POPCONTEST_STATSD_HOST",
        "PYTHON_POPCONTEST_STATSD_PORT",
        "PYTHON_POPCONTEST_STATSD_PREFIX",
        "PYTHON_POPCONTEST_STATSD_PROTOCOL",
    ]
)
