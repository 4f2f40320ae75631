"""QLoRA training on a tiny Qwen2 loaded in 4-bit NF4 on CPU: learning, frozen base, exact save/load, gradients
equal to a dequantised float32 reference (the AVX512-BF16 trap), resume, adapter metadata and merging."""

from __future__ import annotations

import json

import pytest
import torch

from finetune.data import encode_all
from finetune.train import LOSS_LOG, add_lora, answer_loss, collate, train_adapter
from kbcore.config import FinetuneSettings


@pytest.fixture(scope="module")
def examples(char_tokenizer, train_records):
    return encode_all(char_tokenizer, train_records[:6], max_seq_length=96)


def lora_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def base_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


def test_training_lowers_the_loss_and_changes_only_lora_weights(tiny, examples, tmp_path):
    loaded = tiny()
    before = {k.replace("base_model.model.", ""): v for k, v in base_state(loaded.model).items()}
    config = FinetuneSettings(max_steps=8, learning_rate=1e-2, batch_size=2, gradient_accumulation_steps=1,
                         lora_dropout=0.0, warmup_steps=0, max_grad_norm=1.0)
    # The same two examples every step, so the losses track one objective.
    result = train_adapter(loaded, examples[:2], tmp_path / "a", config, data_sha256="d" * 64, progress=False)

    assert result.steps == 8 and result.losses[-1] < result.losses[0] - 0.3, result.losses
    assert all(b < a for a, b in zip(result.losses, result.losses[1:])), result.losses
    after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
             for k, v in base_state(loaded.model).items()}
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k].float(), after[k].float())]
    assert changed == []  # 4-bit weights, their quantisation state, biases, norms, embeddings: all untouched
    lora = lora_state(loaded.model)
    assert len(lora) == 2 * 7 * 2  # A and B, 7 linear layers, 2 blocks
    assert all(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero and has learnt
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    log = [json.loads(line) for line in (tmp_path / "a" / LOSS_LOG).read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 9))
    assert [e["loss"] for e in log] == pytest.approx(result.losses, abs=1e-5)


def test_saved_adapter_reloads_exactly_with_its_metadata(tiny, examples, tmp_path):
    from peft import PeftModel

    from engine.adapters import AdapterError, apply_adapter, read_adapter

    trained = tiny()
    config = FinetuneSettings(max_steps=3, learning_rate=1e-2, gradient_accumulation_steps=1, lora_dropout=0.0)
    train_adapter(trained, examples, tmp_path / "demo", config, data_sha256="d" * 64, progress=False)

    fresh = tiny()
    reloaded = PeftModel.from_pretrained(fresh.model, str(tmp_path / "demo"))
    expected, got = lora_state(trained.model), lora_state(reloaded)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    batch = collate(examples[:2], pad_id=0)
    trained.model.train(), reloaded.train()  # train mode: no bitsandbytes repacking on either
    with torch.no_grad():
        a = trained.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    info = read_adapter(tmp_path / "demo")
    meta = json.loads((tmp_path / "demo" / "kbchat_adapter.json").read_text())
    assert (info.name, info.base_model, info.base_model_sha256) == ("demo", "tiny-qwen2", "tiny-sha")
    assert meta["data_sha256"] == "d" * 64 and meta["config"]["lora_r"] == 16 and meta["metrics"]["steps"] == 3
    other = tiny()
    other.base_sha256 = "another-base"
    with pytest.raises(AdapterError, match="was trained on tiny-qwen2"):
        apply_adapter(other, str(tmp_path / "demo"), tmp_path)


def _lora_gradients(peft_model, batch) -> dict:
    total, tokens = answer_loss(peft_model, batch)
    (total / tokens).backward()
    return {n: p.grad.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def _reference_like(quantized_peft, reference_loaded, config):
    """A float32 model whose linear weights are the 4-bit model's weights dequantised, with the same LoRA."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    reference = reference_loaded.model
    modules = dict(reference.named_modules())
    for name, module in quantized_peft.base_model.model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            target = modules[name.replace(".base_layer", "")]
            target.weight.data = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    peft_ref = get_peft_model(reference, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                                    target_modules=list(quantized_peft.peft_config["default"]
                                                                        .target_modules), task_type="CAUSAL_LM"))
    set_peft_model_state_dict(peft_ref, get_peft_model_state_dict(quantized_peft))
    return peft_ref


def _randomise_lora_b(model, seed=3):
    # B starts at zero, which would leave every A gradient zero: give both real values.
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=generator) * 0.05


def test_lora_gradients_equal_a_dequantised_float32_reference(tiny, examples):
    config = FinetuneSettings(lora_dropout=0.0)
    quantized = add_lora(tiny().model, config)
    _randomise_lora_b(quantized)
    reference = _reference_like(quantized, tiny(quantized=False), config)
    quantized.train(), reference.train()
    batch = collate(examples[:2], pad_id=0)

    # Training code never does this on its own instance; the flag set by add_lora makes it harmless anyway.
    with torch.no_grad():
        quantized.eval()(input_ids=batch["input_ids"][:, :8])
    quantized.train()

    got, expected = _lora_gradients(quantized, batch), _lora_gradients(reference, batch)
    assert got.keys() == expected.keys() and len(got) == 28
    for name in expected:
        assert expected[name].abs().max() > 0, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_without_the_fix_an_eval_forward_breaks_the_gradients(tiny, examples):
    """The trap itself (NOTES): after one no-grad eval forward bitsandbytes repacks the 4-bit weights, and
    training through them then fails or gives wrong gradients. Skipped on CPUs without AVX512-BF16."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    config = FinetuneSettings(lora_dropout=0.0)
    trapped = tiny(repacking_fix=False)
    batch = collate(examples[:2], pad_id=0)
    with torch.no_grad():
        trapped.model.eval()(input_ids=batch["input_ids"][:, :8])  # e.g. a sample generation mid-training
    quantized = add_lora(trapped.model, config)
    _randomise_lora_b(quantized)
    reference = _reference_like(quantized, tiny(quantized=False), config)
    quantized.train(), reference.train()
    expected = _lora_gradients(reference, batch)
    try:
        got = _lora_gradients(quantized, batch)
    except RuntimeError as exc:  # Qwen2's biased q/k/v: "a view of a leaf Variable ... in-place operation"
        assert "leaf Variable" in str(exc) or "in-place" in str(exc), exc
        return
    assert any(not torch.allclose(got[n], expected[n], rtol=1e-3, atol=1e-5) for n in expected)


def test_resume_continues_with_the_same_losses(tiny, examples, tmp_path):
    # Dropout on, accumulation on, several epochs over 5 examples: RNG, optimizer and data order all matter.
    config = FinetuneSettings(max_steps=4, learning_rate=5e-3, gradient_accumulation_steps=2, lora_dropout=0.1,
                         checkpoint_every=100, warmup_steps=1)
    straight = tiny()
    whole = train_adapter(straight, examples[:5], tmp_path / "whole", config, progress=False)

    interrupted = train_adapter(tiny(), examples[:5], tmp_path / "split", config, progress=False, stop_after=2)
    assert interrupted.steps == 2 and not (tmp_path / "split" / "kbchat_adapter.json").exists()
    resumed_model = tiny()
    resumed = train_adapter(resumed_model, examples[:5], tmp_path / "split", config, progress=False, resume=True)

    assert resumed.steps == 4
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5)
    a, b = lora_state(straight.model), lora_state(resumed_model.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    log = [json.loads(line)["step"] for line in (tmp_path / "split" / LOSS_LOG).read_text().splitlines()]
    assert log == [1, 2, 3, 4]


def test_merged_model_matches_the_adapter_on_the_dequantised_base(tiny, tiny_model_dir, examples, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.merge import dequantised_copy_, merge_model

    trained = tiny()
    config = FinetuneSettings(max_steps=2, learning_rate=1e-2, gradient_accumulation_steps=1, lora_dropout=0.0)
    train_adapter(trained, examples, tmp_path / "m", config, progress=False)
    merged = merge_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tmp_path / "m")
    assert not any("lora_" in k for k in merged.state_dict())

    unmerged_base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    dequantised_copy_(unmerged_base)
    unmerged = PeftModel.from_pretrained(unmerged_base, str(tmp_path / "m")).eval()
    ids = collate(examples[:1], pad_id=0)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(input_ids=ids).logits, unmerged(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
        trained.model.train()
        # Against the 4-bit model it was trained on: equal up to float rounding of the 4-bit kernels.
        torch.testing.assert_close(merged(input_ids=ids).logits, trained.model(input_ids=ids).logits,
                                   rtol=1e-3, atol=1e-3)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_resume_reads_trainer_state_without_unpickling_code(tiny, examples, tmp_path):
    import pickle

    config = FinetuneSettings(max_steps=3, learning_rate=5e-3, checkpoint_every=100, warmup_steps=1)
    train_adapter(tiny(), examples[:3], tmp_path / "run", config, progress=False, stop_after=1)
    state_file = tmp_path / "run" / "checkpoint" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=True)  # what we write is plain tensors, lists and numbers
    assert set(state) == {"optimizer", "scheduler", "rng"}
    marker = tmp_path / "code-ran"
    torch.save({**state, "optimizer": _RunsCodeWhenUnpickled(str(marker))}, state_file)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train_adapter(tiny(), examples[:3], tmp_path / "run", config, progress=False, resume=True)
    assert not marker.exists()
