"""kbchat in the browser: ``streamlit run app/main.py --server.address 127.0.0.1``.

Presentation only: every action is a call into ``app.state`` (files, rows, labels), ``app.service`` (the
shared model, retrievers, answers and citations, the same calls the HTTP API ``app.api`` makes) and the packages
behind them (ingest, retrieval, llm).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/main.py` puts app/ on sys.path, not the repository root where the packages live.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import service, state  # noqa: E402
from kbcore.config import load_settings  # noqa: E402

# No emoji in titles: a browser without an emoji font (headless Chromium on a server) draws them as boxes.
st.set_page_config(page_title="kbchat 知识库问答", layout="wide")

NO_ADAPTER = "(none / 无)"


def base_settings():
    try:
        return load_settings()
    except ValueError as exc:
        st.error(f"Configuration error: {exc}")
        st.stop()


def sidebar(settings):
    """Knowledge-base picker and answer settings; returns (settings with the choices applied, kb name, top_k)."""
    sb = st.sidebar
    sb.title("kbchat · 知识库问答")

    def create_kb():
        try:
            name = state.create_kb_folder(settings.kb_root, st.session_state.get("new_kb_name", ""))
        except (state.AppInputError, OSError) as exc:
            st.session_state["kb_notice"] = ("error", str(exc))
            return
        st.session_state["kb_name"] = name
        st.session_state["new_kb_name"] = ""
        st.session_state["kb_notice"] = ("success", f"Created knowledge base '{name}'")

    names = state.list_kbs(settings.kb_root, settings.kb_name)
    if st.session_state.get("kb_name") not in names:
        st.session_state["kb_name"] = names[0]
    kb_name = sb.selectbox("Knowledge base / 知识库", names, key="kb_name")
    with sb.expander("New knowledge base / 新建知识库"):
        st.text_input("Name", key="new_kb_name", placeholder="e.g. contracts")
        st.button("Create", on_click=create_kb, key="create_kb")
    notice = st.session_state.pop("kb_notice", None)
    if notice:
        getattr(sb, notice[0])(notice[1])

    view = sb.radio("View", ["Chat / 问答", "Documents / 文档"], key="view", horizontal=True)

    sb.subheader("Answer settings / 回答设置")
    from engine.models import MODEL_PRESETS

    models = list(MODEL_PRESETS)
    if settings.llm.model not in models:
        models.insert(0, settings.llm.model)
    model = sb.selectbox("Model", models, index=models.index(settings.llm.model), key="model")
    from typing import get_args, get_type_hints

    from kbcore.config import LLMSettings

    formats = list(get_args(get_type_hints(LLMSettings)["quantization"]))
    quantization = sb.selectbox("Weights", formats, index=formats.index(settings.llm.quantization), key="quantization",
                                help="auto: 4-bit NF4, on a CPU with our AVX2 kernels (int8 where they can't run); "
                                     "fp16 gives the same answers as fp32 at the cost of speed.")
    adapters = [NO_ADAPTER]
    try:
        from engine.adapters import list_adapters

        # The folder name, which is what the loader resolves (the metadata's name may differ).
        adapters += [a.path.name for a in list_adapters(settings.adapters_dir)]
    except Exception as exc:  # a broken adapter folder must not take the app down
        sb.warning(f"Cannot list adapters in {settings.adapters_dir}: {exc}")
    if settings.llm.adapter and settings.llm.adapter not in adapters:
        adapters.append(settings.llm.adapter)
    adapter = sb.selectbox("Adapter", adapters,
                           index=adapters.index(settings.llm.adapter) if settings.llm.adapter else 0, key="adapter")
    top_k = sb.slider("Passages (top-k)", 1, 10, settings.retrieval.top_k, key="top_k")
    temperature = sb.slider("Temperature", 0.0, 1.0, float(settings.llm.temperature), 0.05, key="temperature")
    chosen = settings.with_overrides(
        kb_name=kb_name,
        llm={"model": model, "quantization": quantization, "temperature": temperature,
             "adapter": None if adapter == NO_ADAPTER else adapter},
        retrieval={"top_k": top_k})
    return chosen, view.startswith("Chat")


# ---------------------------------------------------------------- documents
def run_ingest(settings, uploads):
    kb_path = settings.kb_path
    bar = st.progress(0.0, text="Starting… / 开始处理…")

    where = {"done": 0, "total": 1, "source": "", "embedded": 0}

    def draw():
        w = where
        bar.progress(w["done"] / max(w["total"], 1),
                     text=f"{w['done']}/{w['total']} files · {w['source']} · {w['embedded']} chunks embedded")

    def progress(done, total, source, result):
        where.update(done=done, total=total, source=source)
        draw()

    def on_embedded(n):  # a long PDF embeds in slices: keep the bar's text moving meanwhile
        where["embedded"] += n
        draw()

    try:
        with st.spinner("Ingesting (the embedding model loads on first use)…"):
            rows = state.ingest_uploads(uploads, settings, kb_path, progress=progress, on_embedded=on_embedded)
    except Exception as exc:  # e.g. a busy knowledge base or another embedding model: say so, keep going
        bar.empty()
        st.session_state["last_ingest"] = {"error": f"Ingest failed: {exc}", "rows": []}
        return
    bar.progress(1.0, text="Finished / 完成")
    st.session_state["last_ingest"] = {"error": None, "rows": rows}


def show_last_ingest():
    last = st.session_state.get("last_ingest")
    if not last:
        return
    if last["error"]:
        st.error(last["error"])
    rows = last["rows"]
    if rows:
        counts = {s: sum(r["status"] == s for r in rows) for s in ("added", "updated", "skipped", "failed")}
        st.write("Last ingest: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        st.dataframe(rows, hide_index=True, width="stretch")
        for r in rows:
            if r["status"] == "failed":
                st.error(f"{r['file']}: {r['reason']}")


def documents_view(settings):
    kb_path = settings.kb_path
    st.header(f"Documents in '{settings.kb_name}' / 文档")
    max_bytes = settings.app.max_upload_mb * 2**20
    uploaded = st.file_uploader(f"Upload PDF, Word, Excel, PowerPoint, .txt, .md or .html "
                                f"(max {settings.app.max_upload_mb} MB each)",
                                type=[s.lstrip(".") for s in state.SUPPORTED_SUFFIXES], accept_multiple_files=True,
                                key=f"uploader-{st.session_state.get('uploader_round', 0)}")
    if st.button("Ingest uploaded files / 导入", disabled=not uploaded, key="ingest_uploads"):
        run_ingest(settings, [(f.name, f.getvalue() if f.size <= max_bytes else
                               state.AppInputError(f"file is {f.size / 2**20:.1f} MB, over the "
                                                   f"{settings.app.max_upload_mb} MB limit")) for f in uploaded])
        # A fresh uploader so the same files are not offered again.
        st.session_state["uploader_round"] = st.session_state.get("uploader_round", 0) + 1
    with st.expander("…or ingest a file or folder on this machine / 从本机路径导入"):
        path = st.text_input("Path", key="ingest_path", placeholder="/path/to/docs or /path/to/file.pdf")
        if st.button("Ingest from path", key="ingest_path_button", disabled=not path):
            try:
                uploads = state.files_on_disk(path, settings.app.allowed_folders, max_bytes=max_bytes)
            except (state.AppInputError, OSError) as exc:
                st.session_state["last_ingest"] = {"error": str(exc), "rows": []}
            else:
                run_ingest(settings, uploads)
    show_last_ingest()
    if note := st.session_state.pop("kb_notice_main", None):
        st.success(note)

    docs = state.kb_documents(kb_path)
    st.subheader(f"{len(docs)} documents · {sum(d['chunks'] for d in docs)} chunks")
    if not docs:
        st.info("No documents yet: upload some above. / 还没有文档，请先上传。")
        return
    st.dataframe(docs, hide_index=True, width="stretch")
    with st.expander("Delete a document / 删除文档"):
        source = st.selectbox("Document", [d["source"] for d in docs], key="delete_source")
        if st.button("Delete", key="delete_button", type="primary"):
            try:
                removed = state.delete_kb_document(kb_path, source)
            except Exception as exc:
                st.error(f"Could not delete {source}: {exc}")
            else:
                st.session_state["kb_notice_main"] = f"Deleted {source}" if removed else f"{source} was not there"
                st.rerun()


# ---------------------------------------------------------------- chat
def show_citations(message):
    if message.get("search_query"):
        st.caption(f"Searched for / 检索: {message['search_query']}")
    if not message.get("found", True):
        if message.get("unmentioned"):
            names = "、".join(state.markdown_escape(n) for n in message["unmentioned"])
            st.info(f"Not in the documents: they never mention {names}, so no answer was made up. / 文档中没有提到：{names}。")
        else:
            st.info("Not in the documents: nothing relevant was found, so no answer was made up. / 文档中没有找到相关内容。")
        return
    if message.get("unsupported"):
        # The answer stage could not find these in the passages it cites (llm.checks): say so, don't assert them.
        st.warning("Not found in the cited passages, check before relying on it / 以下内容未在引用资料中找到，请核对原文："
                   + "；".join(state.markdown_escape(u) for u in message["unsupported"]))
    elif message.get("found", True) and not message.get("citations"):
        st.warning("No passage supports this answer / 没有资料支持这个回答，请核对原文。")
    if message.get("citations"):
        st.caption("Sources / 来源 (open one to read the quoted passage)")
    for c in message.get("citations", []):
        with st.expander(c["label"]):  # document text is shown as text, never rendered as Markdown
            st.markdown("> " + state.markdown_escape(c["snippet"]).replace("\n", "\n> "))


def chat_view(settings, kb_path):
    st.header(f"Ask '{settings.kb_name}' / 提问")
    messages = st.session_state.setdefault("messages", {}).setdefault(settings.kb_name, [])
    for m in messages:
        with st.chat_message(m["role"]):
            st.markdown(state.markdown_escape(m["content"]))
            if m["role"] == "assistant":
                show_citations(m)
    if messages and st.button("Clear conversation / 清空对话", key="clear_chat"):
        messages.clear()
        st.rerun()

    question = st.chat_input("Ask a question about your documents / 请输入问题", key="question")
    if not question:
        return
    from kbcore.store import KnowledgeBase

    with st.chat_message("user"):
        st.markdown(state.markdown_escape(question))
    with st.chat_message("assistant"):
        if not KnowledgeBase.exists(kb_path):
            st.warning("This knowledge base has no documents yet: add some under Documents. / 请先导入文档。")
            return
        try:
            if not service.retrievers.is_open(settings, kb_path):
                with st.spinner("Opening the knowledge base and loading the embedding model…"):
                    service.get_retriever(settings, kb_path)
            if not service.model_is_loaded(settings):
                with st.spinner(f"Loading the language model {settings.llm.model} ({settings.llm.quantization}); "
                                f"the first time it is converted once, about a minute…"):
                    service.get_model(settings)
            answerer = service.answerer(settings, kb_path)
            with st.spinner("Searching the documents…"):
                stream = answerer.stream(question, state.chat_history(messages), k=settings.retrieval.top_k)
            shown = st.empty()
            with shown.container():
                # An answer can quote a document's links and images: they stay text.
                st.write_stream(state.markdown_escape(piece) for piece in stream)
            answer = stream.answer
            # The final text can differ from the raw stream (citations attached, a looping or echoing generation
            # replaced by a quote, a refusal turned into the "not in the documents" answer): show what is kept.
            shown.markdown(state.markdown_escape(answer.text))
        except Exception as exc:  # keep the app usable: show what went wrong with this question
            st.error(f"Could not answer: {exc}")
            return
        # For a follow-up the search used the question joined to the previous one: show that, it explains the hits.
        searched = answer.search_query if answer.search_query and answer.search_query != question else ""
        message = {"role": "assistant", "content": answer.text, **service.answer_fields(answer),
                   "search_query": searched}
        show_citations(message)
    messages += [{"role": "user", "content": question}, message]


def main():
    settings, chat = sidebar(base_settings())
    kb_path = settings.kb_path
    if chat:
        chat_view(settings, kb_path)
    else:
        documents_view(settings)


main()
