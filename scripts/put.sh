# shellcheck shell=bash
# Sourced by scripts/jupyter-service.sh and vagrant/provision.sh (not run on its own).
#
# put MODE PATH: write standard input to PATH only if its content or mode differs,
# and record PATH in the caller's array `changed` (what keeps a second run a no-op).
put() {
    local mode=$1 path=$2 new
    new=$(cat)
    if [ -f "$path" ] && [ "$(cat "$path")" = "$new" ] && [ "$(stat -c %a "$path")" = "$mode" ]; then
        return
    fi
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$new" > "$path.new"
    chmod "$mode" "$path.new"
    mv "$path.new" "$path"
    changed+=("$path")
}
