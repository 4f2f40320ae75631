#!/usr/bin/env bash
# The main job on the embedded default: install, ingest the sample documents into kb/default, open the app.
# KBCHAT_SERVE=api starts the HTTP API (python -m app.api) instead of the app, KBCHAT_SERVE=both starts the two.
set -euo pipefail
cd "$(dirname "$0")/.."
# KBCHAT_* variables are settings to kbchat, which refuses unknown ones: take this script's own out of their way.
no_app=${KBCHAT_NO_APP:-0}
serve=${KBCHAT_SERVE:-app}
unset KBCHAT_NO_APP KBCHAT_SERVE
case "$serve" in
    app | api | both) ;;
    *) echo "KBCHAT_SERVE must be app, api or both (got '$serve')" >&2; exit 2 ;;
esac
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m ingest samples --kb kb/default
if [ "$no_app" = 1 ]; then
    exit 0
fi
# The API's port is the setting api.port unless API_PORT is given.
api=(.venv/bin/python -m app.api ${API_PORT:+--port "$API_PORT"})
if [ "$serve" = api ]; then
    exec "${api[@]}"
fi
if [ "$serve" = both ]; then
    "${api[@]}" &
    api_pid=$!
    trap 'kill "$api_pid" 2>/dev/null || true' EXIT
fi
# Streamlit holds an upload in memory up to its own cap before the app sees it: make that cap the setting's.
max_upload_mb=$(.venv/bin/python -c "from kbcore.config import load_settings; print(load_settings().app.max_upload_mb)")
echo "Opening the app at http://127.0.0.1:${PORT:-8501} (Ctrl-C stops it)"
app=(.venv/bin/streamlit run app/main.py --server.headless true --server.address 127.0.0.1
    --server.port "${PORT:-8501}" --browser.gatherUsageStats false --server.maxUploadSize "$max_upload_mb")
if [ "$serve" = both ]; then
    "${app[@]}"  # not exec: the trap stops the API when the app ends
else
    exec "${app[@]}"
fi
