# /etc/profile.d/popcon-site.sh: login shells report which Python libraries they import.
# Settings live in /etc/popcon-site/env (deploy/vm/popcon-site.env).
if [ -r /etc/popcon-site/env ]; then
    set -a
    . /etc/popcon-site/env
    set +a
fi
