# Sourced by scripts/demo and scripts/test: a venv of the machine's python3 at $1.
# Debian and Ubuntu's python3 refuses `pip install` outside a venv (PEP 668), and its
# venv module needs the python3-venv package: installed here when run as root.
make_venv() {
    [ -x "$1/bin/pip" ] && return 0
    rm -rf "$1"
    if ! python3 -m venv "$1" >/dev/null 2>&1; then
        rm -rf "$1"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get install -y -qq python3-venv >/dev/null \
                || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
            python3 -m venv "$1"
        else
            echo "python3 -m venv failed: install python3-venv (sudo apt-get install python3-venv)" >&2
            return 1
        fi
    fi
    "$1/bin/python" -m pip install --quiet --upgrade pip
}
