# Sourced by the test scripts that run Python tools (tests/clients, tests/ui, tests/tempest):
#
#   pinned_venv VENV REQUIREMENTS WHAT
#
# makes the venv VENV if it is missing (with $PYTHON, default python3.11 if present, else
# python3) and installs REQUIREMENTS into it once. A stamp in the venv holds the hash of the
# requirements and the interpreter version, so editing the pins or recreating the venv with
# another Python triggers a reinstall and an unchanged setup costs nothing. WHAT names the
# tools in the progress lines. pip gets 15 minutes at most.

pinned_venv() {
    local venv=$1 requirements=$2 what=$3 python=${PYTHON:-} stamp want start
    if [[ -z $python ]]; then
        if command -v python3.11 >/dev/null; then python=python3.11; else python=python3; fi
    fi
    if [[ ! -x $venv/bin/python ]]; then
        echo "creating venv in $venv" >&2
        "$python" -m venv "$venv"
    fi
    stamp=$venv/.ocellus-requirements.stamp
    want=$( { sha256sum <"$requirements"; "$venv/bin/python" -VV; } | sha256sum | cut -d' ' -f1)
    if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
        echo "installing pinned $what into $venv" >&2
        start=$SECONDS
        timeout 900 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
        echo "installed in $((SECONDS - start)) s" >&2
        echo "$want" >"$stamp"
    fi
}
