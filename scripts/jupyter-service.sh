#!/usr/bin/env bash
# Run the lab's JupyterLab as a systemd service that comes back after a reboot,
# as root, after scripts/setup.sh. Idempotent: a file is written only when its
# content differs, the token is generated once, and a second run prints
# "jupyter-service: nothing changed".
#
#   /var/lib/labkit/jupyter.env               JUPYTER_TOKEN=... (generated once, mode 0600)
#   /srv/labkit/handouts/NN-*.ipynb            the student versions JupyterLab opens on
#   /etc/systemd/system/labkit-jupyter.service the unit (root: the notebooks make namespaces)
#   /usr/local/sbin/labkit-token               prints the login URL with the token
#   /var/lib/labkit/jupyter.stamp              a digest of what the service runs (the unit,
#                                              the venv's installed set, labkit's code): when
#                                              it changes, the running service is restarted
#
# The handouts are `labkit exercises build`'s student versions of notebooks/
# (answers stubbed, check cells locked): JupyterLab's root is that folder, so
# the solutions are not in the student's file browser. A handout is built only
# when it is missing: running this again never overwrites a student's work.
# The solutions stay in the repository's notebooks/, where `labkit check` reads
# them (its default --solutions).
#
# Environment: LABKIT_HANDOUTS (default /srv/labkit/handouts), LABKIT_VENV
# (default .venv in the repository), LABKIT_JUPYTER_IP
# (default 127.0.0.1; the lab VM uses 0.0.0.0 because its NAT port forward, bound
# to the host's 127.0.0.1, arrives on the VM's own interface), LABKIT_JUPYTER_PORT
# (default 8888), LABKIT_HOST_PORT (default LABKIT_JUPYTER_PORT: the port the
# browser uses, different behind a port forward such as Vagrant's LABKIT_PORT;
# the login URL names it).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LABKIT_VENV:-$repo/.venv}
handouts=${LABKIT_HANDOUTS:-/srv/labkit/handouts}
ip=${LABKIT_JUPYTER_IP:-127.0.0.1}
port=${LABKIT_JUPYTER_PORT:-8888}
host_port=${LABKIT_HOST_PORT:-$port}
state=/var/lib/labkit
unit=labkit-jupyter.service
changed=()

if [ "$(id -u)" -ne 0 ]; then
    echo "jupyter-service: needs root: run it with sudo" >&2
    exit 1
fi
if [ ! -x "$venv/bin/jupyter" ]; then
    echo "jupyter-service: $venv/bin/jupyter not found: run scripts/setup.sh first" >&2
    exit 1
fi
if ! command -v systemctl >/dev/null; then
    echo "jupyter-service: systemctl not found: this host does not use systemd; run ./lab jupyter instead" >&2
    exit 1
fi

# shellcheck source=scripts/put.sh
. "$repo/scripts/put.sh"

# The token: 48 hex digits from the kernel's random pool, made once and kept.
mkdir -p "$state"
if [ ! -s "$state/jupyter.env" ]; then
    token=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    (umask 077 && echo "JUPYTER_TOKEN=$token" > "$state/jupyter.env")
    changed+=("$state/jupyter.env")
fi

# The student versions of the notebooks that have none yet in $handouts.
missing=()
for notebook in "$repo"/notebooks/[0-9][0-9]-*.ipynb; do
    [ -e "$handouts/${notebook##*/}" ] || missing+=("$notebook")
done
if [ ${#missing[@]} -gt 0 ]; then
    "$venv/bin/labkit" exercises build "$handouts" "${missing[@]}" >/dev/null
    changed+=("$handouts (${#missing[@]} handouts built)")
fi

put 644 "/etc/systemd/system/$unit" <<EOF
[Unit]
Description=labkit JupyterLab on $ip:$port (the handouts in $handouts)
After=network.target local-fs.target remote-fs.target
# Keep retrying while the repository's shared folder is not mounted yet.
StartLimitIntervalSec=0

[Service]
EnvironmentFile=$state/jupyter.env
Environment=LABKIT_VENV=$venv
WorkingDirectory=$handouts
ExecStart=$venv/bin/jupyter lab --allow-root --no-browser --ip $ip --port $port --ServerApp.root_dir=$handouts
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF

# The URL the browser opens names the host's side of the forward ($host_port); when
# that differs from JupyterLab's own port, the URL inside the VM follows on stderr.
inside=""
if [ "$host_port" != "$port" ]; then
    inside="echo \"(inside the VM: http://127.0.0.1:$port/lab?token=\$token)\" >&2"
fi
put 755 /usr/local/sbin/labkit-token <<EOF
#!/bin/sh
# Print the lab's JupyterLab login URL with its token (made by scripts/jupyter-service.sh).
set -e
token=\$(sed -n 's/^JUPYTER_TOKEN=//p' $state/jupyter.env)
echo "http://127.0.0.1:$host_port/lab?token=\$token"
$inside
EOF

# What the service runs: its unit, the venv's installed set (setup.sh's stamp: the
# lock and pyproject.toml) and labkit's code (the server's kernels import it). When
# any changed since the service last started, the running server is stale: restart it.
runs=$( { cat "/etc/systemd/system/$unit" "$venv/.labkit-installed" 2>/dev/null
          find "$repo/labkit" -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 cat; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$state/jupyter.stamp" 2>/dev/null)" != "$runs" ]; then
    echo "$runs" > "$state/jupyter.stamp"
    changed+=("$state/jupyter.stamp (what $unit runs)")
fi

if ! systemctl is-enabled --quiet "$unit" 2>/dev/null; then
    systemctl enable --quiet "$unit"
    changed+=("enabled $unit")
fi

# A running systemd has /run/systemd/system (sd_booted(3)); in a chroot or a
# container without systemd the unit is enabled and starts at the next boot.
if [ -d /run/systemd/system ]; then
    if [ ${#changed[@]} -gt 0 ]; then
        systemctl daemon-reload
        systemctl restart "$unit"
        changed+=("restarted $unit")
    elif ! systemctl is-active --quiet "$unit"; then
        systemctl start "$unit"
        changed+=("started $unit")
    fi
else
    echo "jupyter-service: systemd is not running here: $unit starts at the next boot"
fi

if [ ${#changed[@]} -gt 0 ]; then
    printf 'jupyter-service: changed %s\n' "${changed[@]}"
else
    echo "jupyter-service: nothing changed"
fi
echo "jupyter-service: the login URL: sudo labkit-token"
