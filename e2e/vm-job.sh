#!/usr/bin/env bash
# Inside the lab VM, as root, from /labkit (e2e/test_student_path.py runs it with
# `scripts/labvm.py run -- bash e2e/vm-job.sh SECONDS`): make the lab's JupyterLab
# serve the handouts of this checkout's notebooks, print its login URL, and wait
# until the host says it is done (or SECONDS pass).
#
# labkit-jupyter serves the handouts folder (its WorkingDirectory, set by
# scripts/jupyter-service.sh): the student versions, built when the image was
# provisioned. The checkout at /labkit may be newer than the image, so the
# handouts are built again from /labkit/notebooks into a tmpfs, with the same
# `labkit exercises build`, and that tmpfs is bind-mounted over the handouts
# folder; then labkit-jupyter is restarted to serve it. Everything else of the
# service (unit, token, venv, port, the solutions in /labkit/notebooks) is the
# student's.
#
# "Done" is a file named e2e-done that the host creates in the served folder
# through the Jupyter contents API: it lands in the tmpfs.
set -euo pipefail

wait_max=${1:-3600}
top=/run/labkit-e2e
copy=$top/handouts
handouts=$(systemctl show -P WorkingDirectory labkit-jupyter)

mkdir -p "$top"
mount -t tmpfs -o mode=0755,size=512m labkit-e2e "$top"
labkit exercises build "$copy" >/dev/null
mount --bind "$copy" "$handouts"
systemctl restart labkit-jupyter
echo "labkit-e2e: handouts in $handouts on $(findmnt -n -o FSTYPE --target "$handouts")"
echo "labkit-e2e: url $(labkit-token)"

deadline=$((SECONDS + wait_max))
while [ ! -e "$copy/e2e-done" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "labkit-e2e: the host did not say done within $wait_max s"
        exit 1
    fi
    sleep 1
done
echo "labkit-e2e: done; handouts still on $(findmnt -n -o FSTYPE --target "$handouts")"
echo "labkit-e2e: labkit-jupyter $(systemctl is-active labkit-jupyter)"
