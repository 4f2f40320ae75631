#!/usr/bin/env bash
# The main job on the embedded default: install, ingest the sample documents into kb/default, open the app.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# KBCHAT_* variables are settings to kbchat, which refuses unknown ones: take this one out of their way.
no_app=${KBCHAT_NO_APP:-0}
unset KBCHAT_NO_APP
.venv/bin/python -m ingest samples --kb kb/default
if [ "$no_app" = 1 ]; then
    exit 0
fi
# Streamlit holds an upload in memory up to its own cap before the app sees it: make that cap the setting's.
max_upload_mb=$(.venv/bin/python -c "from kbcore.config import load_settings; print(load_settings().app.max_upload_mb)")
echo "Opening the app at http://127.0.0.1:${PORT:-8501} (Ctrl-C stops it)"
exec .venv/bin/streamlit run app/main.py --server.headless true --server.address 127.0.0.1 \
    --server.port "${PORT:-8501}" --browser.gatherUsageStats false --server.maxUploadSize "$max_upload_mb"
