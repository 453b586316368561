#!/bin/sh
# Sandbox entrypoint, shared by every image in images/ (each image directory holds an
# identical copy; a test keeps them identical). fixuid runs it as the sandbox user:
#   ENTRYPOINT ["fixuid", "-q", "/entrypoint.sh"]
#
# 1. Secrets: every regular file in ${PI_SECRETS_DIR:-/run/secrets} becomes an environment
#    variable named by its upper-cased file name (anthropic_api_key -> ANTHROPIC_API_KEY).
#    The relay mounts one file per secret there, so secrets never appear in the container's
#    Env, its command line or `docker inspect`; they live only in the command's environment.
# 2. codex-universal only: its language-version setup runs when a CODEX_ENV_* variable asks.
# 3. exec "$@": the command (pi) replaces this shell.
#
# Value policy: the file's bytes are kept exactly (spaces, quotes, `$`, backslashes, inner
# newlines, a carriage return), except that ONE trailing newline is removed, the one that
# `echo value > file` and editors add; further trailing newlines are kept.
#
# Files that do not become variables, each with a one-line warning on stderr that names the
# file and never shows its content:
#   - a name that is not a valid variable name once upper-cased ([A-Za-z_][A-Za-z0-9_]*);
#   - a name reserved for the sandbox itself (PATH, HOME, USER, ..., LD_*, PI_SECRETS_DIR,
#     PI_CODING_AGENT_DIR, PI_SESSION_ID), which a secret must not replace;
#   - a directory, a FIFO, a socket or a device;
#   - a symlink, unless it leads to a regular file inside the secrets directory (the layout
#     of a Kubernetes Secret volume: name -> ..data/name);
#   - an unreadable file;
#   - a file holding a NUL byte, which no environment variable can hold;
#   - a value over 65536 bytes (not counting the one trailing newline), or one that would
#     take the secrets past 1048576 bytes in total: the kernel refuses to start a program
#     whose environment is too large, so one oversized secret would keep pi from starting.
# An empty file sets an empty variable, with a warning. Names starting with a dot are ignored
# silently (Kubernetes keeps its bookkeeping there). A missing or empty directory loads
# nothing and says nothing; a directory that cannot be read gets one warning.

secrets_dir=${PI_SECRETS_DIR:-/run/secrets}
max_size=65536
max_total=1048576
lower=abcdefghijklmnopqrstuvwxyz
upper=ABCDEFGHIJKLMNOPQRSTUVWXYZ
digits=0123456789
nl='
'

warn() {
    printf 'entrypoint: %s\n' "$1" >&2
}

skip() {
    warn "skipping secret file '$1': $2"
}

if [ -d "$secrets_dir" ] && { [ ! -r "$secrets_dir" ] || [ ! -x "$secrets_dir" ]; }; then
    warn "cannot read $secrets_dir as uid $(id -u); no secrets loaded"
elif [ -d "$secrets_dir" ]; then
    real_dir=$(cd -P -- "$secrets_dir" && pwd -P)
    total=0
    for file in "$secrets_dir"/*; do
        base=${file##*/}
        # An empty directory leaves the pattern itself.
        [ -e "$file" ] || [ -L "$file" ] || continue
        src=$file
        if [ -L "$file" ]; then
            target=$(readlink -f -- "$file" 2>/dev/null) || target=
            case $target in
                "$real_dir"/*) src=$target ;;
                *) skip "$base" "a symlink that does not lead to a file inside $secrets_dir"; continue ;;
            esac
        fi
        if [ -d "$src" ]; then
            skip "$base" "a directory, not a file"; continue
        elif [ ! -f "$src" ]; then
            skip "$base" "not a regular file"; continue
        fi
        case $base in
            [!"$lower$upper"_]* | *[!"$lower$upper$digits"_]*)
                skip "$base" "not a valid variable name"; continue ;;
        esac
        name=$(printf '%s' "$base" | tr "$lower" "$upper")
        case $name in
            PATH | HOME | USER | LOGNAME | SHELL | PWD | OLDPWD | IFS | ENV | BASH_ENV | CDPATH | \
            LD_* | PI_SECRETS_DIR | PI_CODING_AGENT_DIR | PI_SESSION_ID)
                skip "$base" "$name is reserved for the sandbox"; continue ;;
        esac
        if [ ! -r "$src" ] || ! size=$(wc -c <"$src" 2>/dev/null); then
            skip "$base" "cannot read it"; continue
        fi
        size=$((size))
        # The limit is on the value: one trailing newline (removed below) does not count.
        if [ "$size" -gt "$max_size" ] &&
            { [ "$size" -gt $((max_size + 1)) ] || [ -n "$(tail -c 1 "$src")" ]; }; then
            skip "$base" "$size bytes, more than the $max_size a secret may have"; continue
        fi
        if [ $((total + size)) -gt "$max_total" ]; then
            skip "$base" "the secrets would take more than $max_total bytes in total"; continue
        fi
        kept=$(tr -d '\000' <"$src" | wc -c)
        if [ $((kept)) -ne "$size" ]; then
            skip "$base" "it holds a NUL byte, which an environment variable cannot"; continue
        fi
        # $(...) strips every trailing newline; the sentinel x protects them, then exactly
        # one is removed per the policy above.
        if ! value=$(cat -- "$src" 2>/dev/null && printf x); then
            skip "$base" "cannot read it"; continue
        fi
        value=${value%x}
        value=${value%"$nl"}
        [ -n "$value" ] || warn "secret file '$base' is empty: $name is set to an empty value"
        export "$name=$value"
        total=$((total + size))
    done
elif [ -e "$secrets_dir" ]; then
    warn "$secrets_dir is not a directory; no secrets loaded"
fi
unset secrets_dir max_size max_total lower upper digits nl real_dir total file base src target \
    name size kept value

if [ "$#" -eq 0 ]; then
    warn "no command to run"
    exit 64
fi

# codex-universal: /setup_universal.sh switches language versions (CODEX_ENV_NODE_VERSION,
# ...). It is a bash script, and anything it prints goes to stderr: stdout belongs to pi's RPC.
if [ -f /setup_universal.sh ] && [ -n "${CODEX_ENV_PYTHON_VERSION:-}${CODEX_ENV_NODE_VERSION:-}${CODEX_ENV_RUST_VERSION:-}${CODEX_ENV_GO_VERSION:-}${CODEX_ENV_SWIFT_VERSION:-}${CODEX_ENV_RUBY_VERSION:-}${CODEX_ENV_PHP_VERSION:-}${CODEX_ENV_JAVA_VERSION:-}" ]; then
    # shellcheck disable=SC2016 # expanded by bash, not here
    exec bash -c '. /setup_universal.sh >&2 && exec "$@"' entrypoint "$@"
fi

exec "$@"
