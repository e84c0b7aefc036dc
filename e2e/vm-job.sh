#!/usr/bin/env bash
# Inside the lab VM, as root, from /labkit (e2e/test_student_path.py runs it with
# `scripts/labvm.py run -- bash e2e/vm-job.sh SECONDS`): make the lab's JupyterLab
# serve a copy of the notebooks, print its login URL, and wait until the host says
# it is done (or SECONDS pass).
#
# /labkit is the host's live checkout (9p, read-write), and JupyterLab autosaves an
# open notebook (every 120 s by default) and writes .ipynb_checkpoints/: so the
# notebooks are copied to a tmpfs and that copy is bind-mounted over
# /labkit/notebooks, then labkit-jupyter is restarted to serve it. Everything else
# of the service (unit, token, venv, port) is the student's.
#
# "Done" is a file named e2e-done that the host creates in the notebook folder
# through the Jupyter contents API: it lands in the tmpfs, never in the checkout.
set -euo pipefail

wait_max=${1:-3600}
top=/run/labkit-e2e
copy=$top/notebooks

mkdir -p "$top"
mount -t tmpfs -o mode=0755,size=512m labkit-e2e "$top"
mkdir "$copy"
cp -a /labkit/notebooks/. "$copy/"
mount --bind "$copy" /labkit/notebooks
systemctl restart labkit-jupyter
echo "labkit-e2e: notebooks on $(findmnt -n -o FSTYPE --target /labkit/notebooks)"
echo "labkit-e2e: url $(labkit-token)"

deadline=$((SECONDS + wait_max))
while [ ! -e "$copy/e2e-done" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "labkit-e2e: the host did not say done within $wait_max s"
        exit 1
    fi
    sleep 1
done
echo "labkit-e2e: done; notebooks still on $(findmnt -n -o FSTYPE --target /labkit/notebooks)"
echo "labkit-e2e: labkit-jupyter $(systemctl is-active labkit-jupyter)"
