# jupyterhub_config.py snippet: every single-user server gets the popcon-site settings,
# however the hub was started (systemd, a container, by hand, The Littlest JupyterHub).
#   TLJH:            /opt/tljh/config/jupyterhub_config.d/popcon-site.py
#   plain JupyterHub (no jupyterhub_config.d): append this file to jupyterhub_config.py,
#                    or add there: load_subconfig("/etc/jupyterhub/popcon-site.py")
#   z2jh:            use deploy/kubernetes/z2jh-config.yaml (singleuser.extraEnv) instead.
# The settings are read from /etc/popcon-site/env (POPCON_SITE_ENV_FILE in the hub's
# environment names another file); PYTHON_POPCONTEST_* in the hub's own environment
# win over the file's. They go into Spawner.environment, which the spawner sets for the
# server. The server itself never reports (popcon-site's Jupyter server extension); its
# kernels and what its terminals run do. Without any setting the hub says so in its log.
import os

c = get_config()  # noqa: F821


def _popcon_site_settings() -> dict:
    path = os.environ.get("POPCON_SITE_ENV_FILE", "/etc/popcon-site/env")
    settings = {}
    try:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                key, sep, value = line.strip().partition("=")
                if sep and key.startswith("PYTHON_POPCONTEST_"):
                    settings[key.strip()] = value.strip().strip("\"'")
    except OSError:
        pass
    for key, value in os.environ.items():
        if key.startswith("PYTHON_POPCONTEST_"):
            settings[key] = value
    return settings


_settings = _popcon_site_settings()
if _settings:
    c.Spawner.environment.update(_settings)
else:
    import sys

    print(
        "popcon-site: no PYTHON_POPCONTEST_* settings in the hub's environment nor in "
        + os.environ.get("POPCON_SITE_ENV_FILE", "/etc/popcon-site/env")
        + ": single-user servers will not report",
        file=sys.stderr,
    )
# The hub is machinery too: when popcon-site is installed in the hub's environment and
# the hub inherited the settings (the systemd drop-in), it sends nothing.
try:
    import popcon_site

    popcon_site.stop_reporting()
except Exception:
    pass
