# Shared by the fmp node-preparation steps (sourced from the step's files, never run alone).
#
# Every file a step writes lives under ROOT (FMP_ROOT from the values: empty on a real node,
# a folder of its own per node in the tests, where every node is one machine). Files are
# written whole (temp file, then rename) and only when their content or mode differs, so a
# second run changes nothing and restarts nothing.

ROOT=${FMP_ROOT:-}

# need NAME...: stop (exit 2) naming the first site value that is missing.
need() {
    for name in "$@"; do
        eval "value=\${$name:-}"
        if [ -z "$value" ]; then
            echo "$name is not set: give it in the values file (--values)" >&2
            exit 2
        fi
    done
}

# put MODE PATH: standard input becomes ROOT/PATH with MODE when it differs from what is there;
# says so and succeeds then, fails (status 1) when nothing changed.
put() {
    target=$ROOT$2
    mkdir -p "$(dirname "$target")"
    tmp=$(mktemp "$(dirname "$target")/.airbundle.XXXXXX")
    cat > "$tmp"
    chmod "$1" "$tmp"
    if [ -f "$target" ] && cmp -s "$tmp" "$target" && [ "$(stat -c %a "$target")" = "$(stat -c %a "$tmp")" ]; then
        rm -f "$tmp"
        return 1
    fi
    mv "$tmp" "$target"
    echo "wrote $2 ($1)"
}

# node_field NAME FIELD: the inventory's ADDRESS (2) or ROLES (3) of node NAME (AIRBUNDLE_NODES).
node_field() {
    printf '%s\n' "$AIRBUNDLE_NODES" | awk -v n="$1" -v f="$2" '$1 == n { print $f; exit }'
}

# nodes_with ROLE: the names of the inventory's nodes that have ROLE, one a line.
nodes_with() {
    printf '%s\n' "$AIRBUNDLE_NODES" | awk -v r="$1" '{ n = split($3, roles, ","); for (i = 1; i <= n; i++) if (roles[i] == r) print $1 }'
}
