#!/bin/sh
# Sandbox entrypoint: turn each secret file into an environment variable, then
# run the command. The relay mounts one file per secret at /run/secrets, named
# by the lower-case variable name (anthropic_api_key -> ANTHROPIC_API_KEY), so
# secrets never appear in the container's Env, its command line or `docker inspect`.
#
# Value policy: the file's bytes are kept exactly, except that ONE trailing
# newline is removed (what `echo value > file` and editors add). Further
# trailing newlines, spaces, quotes, `$` and backslashes are kept. NUL bytes
# cannot be held by an environment variable at all.
#
# Only regular files count: subdirectories and symlinks are skipped, so a
# mounted secret cannot point the entrypoint at another file in the image.
# A file whose upper-cased name is not a valid variable name is skipped with a
# warning that names the file; the value is never printed.

secrets_dir=${PI_SECRETS_DIR:-/run/secrets}
nl='
'

if [ -d "$secrets_dir" ] && [ -r "$secrets_dir" ] && [ -x "$secrets_dir" ]; then
    for file in "$secrets_dir"/*; do
        [ -f "$file" ] && [ ! -L "$file" ] || continue
        base=${file##*/}
        # Validate before upper-casing: lower-case letters map to A-Z, and
        # anything else that is not [A-Z0-9_] stays invalid after upper-casing.
        case $base in
            [!A-Za-z_]* | *[!A-Za-z0-9_]*)
                echo "entrypoint: skipping secret file '$base': not a valid variable name" >&2
                continue ;;
        esac
        name=$(printf '%s' "$base" | LC_ALL=C tr 'a-z' 'A-Z')
        # $(...) strips every trailing newline; the sentinel x protects them,
        # then exactly one is removed per the policy above.
        value=$(cat -- "$file" && printf x) || {
            echo "entrypoint: skipping secret file '$base': cannot read it" >&2
            continue
        }
        value=${value%x}
        value=${value%"$nl"}
        export "$name=$value"
    done
elif [ -e "$secrets_dir" ]; then
    # Usually the sandbox runs under a uid other than the secrets' owner.
    echo "entrypoint: cannot read $secrets_dir as uid $(id -u); no secrets loaded" >&2
fi

exec "$@"
