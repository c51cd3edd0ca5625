"""The part tokenizer and the baselines: shapes, modes, masks, determinism, and learning."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import SMALL_CONV, SMALL_TOKENIZER

from parttok import model as model_module
from parttok.baselines import ConvVQ, ResidualConvVQ
from parttok.errors import FeatureError
from parttok.features import FEATURE_DIM, POSE_FEATURE_INDICES
from parttok.model import (
    FIVE_PARTS,
    SIX_PARTS,
    PartTokenizer,
    QueryPooling,
    SpaceTimeLayer,
    attend,
    attend_locally,
    temporal_mask,
)

CLIPS = ("000000", "007005", "012314", "M010655")
# Tiny sizes so every test runs in a second or two on two loaded cores: the shared small
# configuration with its own joint width, codebook and the default attention window.
SMALL = {**SMALL_TOKENIZER, "joint_dim": 16, "codebook_size": 32, "attention_window": 8}

MODELS = {
    "six_parts": lambda: PartTokenizer(**SMALL),
    "five_parts": lambda: PartTokenizer(**SMALL, parts=FIVE_PARTS),
    "pose": lambda: PartTokenizer(**SMALL, mode="pose"),
    "continuous": lambda: PartTokenizer(**SMALL, mode="continuous"),
    "fsq": lambda: PartTokenizer(
        **{**SMALL, "codebook_size": 100}, quantizer="fsq", fsq_levels=[5, 5, 4]
    ),
    "conv_vq": lambda: ConvVQ(**SMALL_CONV),
    "residual_vq": lambda: ResidualConvVQ(**SMALL_CONV),
}
EXPECTED_PARTS = {
    "six_parts": tuple(SIX_PARTS),
    "five_parts": tuple(FIVE_PARTS),
    "pose": tuple(SIX_PARTS),
    "continuous": tuple(SIX_PARTS),
    "fsq": tuple(SIX_PARTS),
    "conv_vq": ("body",),
    "residual_vq": tuple(f"layer{i}" for i in range(6)),
}


@pytest.fixture(autouse=True)
def single_thread():
    """These tensors are tiny: one thread is faster, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clips(humanml3d_dir) -> list[torch.Tensor]:
    """The real HumanML3D clips, normalised with the dataset's statistics: (T, 263) each."""
    mean = np.load(humanml3d_dir / "Mean.npy")
    std = np.load(humanml3d_dir / "Std.npy")
    loaded = [np.load(humanml3d_dir / "new_joint_vecs" / f"{name}.npy") for name in CLIPS]
    return [torch.from_numpy((clip - mean) / std).float() for clip in loaded]


@pytest.fixture(scope="module")
def windows(clips) -> torch.Tensor:
    """(8, 64, 263): two 64-frame windows of each real clip."""
    return torch.stack([clip[start : start + 64] for clip in clips for start in (0, 48)])


def trained_once(model: torch.nn.Module, batch: torch.Tensor) -> torch.nn.Module:
    """The model after one training forward (k-means initialises the codebooks)."""
    torch.manual_seed(0)
    model.train()
    model(batch)
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_shapes_and_properties(name, windows):
    torch.manual_seed(0)
    model = MODELS[name]()
    batch, frames = windows.shape[:2]
    out = model(windows)
    steps = frames // model.frames_per_step
    parts = model.num_parts
    assert model.part_names == EXPECTED_PARTS[name] and parts == len(EXPECTED_PARTS[name])
    assert model.frames_per_step == (1 if name == "pose" else 4)
    assert out.reconstruction.shape == (batch, frames, FEATURE_DIM)
    assert out.aux_loss.shape == () and torch.isfinite(out.aux_loss)
    latent_groups = 1 if name in ("conv_vq", "residual_vq") else parts
    assert out.latents.shape == (batch, steps, latent_groups, model.code_dim)
    (out.reconstruction.square().mean() + out.aux_loss).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())

    codes = model.encode(windows)
    if name == "continuous":
        assert not model.is_quantized and model.codebook_size is None and out.codes is None
        assert codes.shape == (batch, steps, parts, model.code_dim)
        with pytest.raises(ValueError):
            model.codebook_vectors()
    else:
        assert model.is_quantized
        assert out.codes.shape == codes.shape == (batch, steps, parts)
        assert codes.dtype == out.codes.dtype == torch.long
        assert codes.min() >= 0 and codes.max() < model.codebook_size
        vectors = model.codebook_vectors()
        assert vectors.shape == (parts, model.codebook_size, model.code_dim)
    assert model.decode(codes).shape == (batch, frames, FEATURE_DIM)
    json.dumps(model.config)  # the config is plain data


@pytest.mark.parametrize("name", list(MODELS))
def test_encode_is_deterministic_and_leaves_every_tensor_unchanged(name, windows):
    model = trained_once(MODELS[name](), windows)
    assert model.codebook_initialised
    before = {key: value.clone() for key, value in model.state_dict().items()}
    first = model.encode(windows)
    second = model.encode(windows[:3])
    model.decode(first)
    assert model.training and all(module.training for module in model.modules())
    assert torch.equal(first[:3], second)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"encode changed {key}"


@pytest.mark.parametrize("name", ["six_parts", "conv_vq", "residual_vq"])
def test_encode_before_initialisation_gives_zeros_and_initialises_nothing(name, windows):
    model = MODELS[name]()
    assert not model.codebook_initialised
    assert (model.encode(windows) == 0).all()
    model.eval()
    model(windows)  # an eval forward (Lightning's sanity check) must not initialise either
    assert not model.codebook_initialised


@pytest.mark.parametrize("name", list(MODELS))
def test_decode_of_encode_equals_the_eval_forward(name, windows):
    model = trained_once(MODELS[name](), windows).eval()
    mask = torch.ones(windows.shape[:2], dtype=torch.bool)
    mask[2, 40:] = False
    out = model(windows, mask)
    codes = model.encode(windows, mask)
    if out.codes is not None:
        assert torch.equal(out.codes, codes)
    torch.testing.assert_close(model.decode(codes, mask), out.reconstruction, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["six_parts", "five_parts", "pose", "conv_vq", "residual_vq"])
def test_padding_never_changes_the_real_frames(name, windows, clips):
    """A clip's codes alone equal its codes batched (padded, masked) with a longer clip,
    whatever the padding holds."""
    model = trained_once(MODELS[name](), windows)
    short, long = clips[0][:64], clips[1][:128]  # real clips, 64 and 128 frames
    batch = torch.stack([torch.cat([short, torch.randn(64, FEATURE_DIM) * 3]), long])
    mask = torch.ones(2, 128, dtype=torch.bool)
    mask[0, 64:] = False
    steps = 64 // model.frames_per_step
    codes = model.encode(batch, mask)
    assert torch.equal(codes[0, :steps], model.encode(short[None])[0])
    assert (codes[0, steps:] == -1).all()
    assert torch.equal(codes[1], model.encode(long[None])[0])
    decoded = model.decode(codes, mask)
    torch.testing.assert_close(
        decoded[0, :64], model.decode(codes[:1, :steps])[0], atol=1e-5, rtol=0
    )
    assert (decoded[0, 64:] == 0).all()
    # Without a mask, decode reads padding from the -1 codes.
    torch.testing.assert_close(model.decode(codes), decoded, atol=1e-6, rtol=0)


def test_a_step_with_padded_frames_ignores_what_the_padding_holds(windows):
    model = trained_once(PartTokenizer(**SMALL), windows)
    mask = torch.ones(windows.shape[:2], dtype=torch.bool)
    mask[:, 62:] = False  # the last step has two real frames
    noisy = windows.clone()
    noisy[:, 62:] = torch.randn(len(windows), 2, FEATURE_DIM)
    assert torch.equal(model.encode(windows, mask), model.encode(noisy, mask))


def test_pose_mode_reads_only_pose_features_and_each_frame_alone(windows):
    model = trained_once(PartTokenizer(**SMALL, mode="pose"), windows)
    pose_dims = sorted(i for indices in POSE_FEATURE_INDICES for i in indices)
    assert list(model.input_feature_indices) == pose_dims and len(pose_dims) == 190
    other = torch.ones(FEATURE_DIM, dtype=torch.bool)
    other[pose_dims] = False
    changed = windows.clone()
    changed[..., other] = torch.randn_like(changed[..., other]) * 5  # velocities, contacts, root
    codes = model.encode(windows)
    assert torch.equal(codes, model.encode(changed))
    assert (model.decode(codes)[..., other] == 0).all()
    # Frames are independent poses: shuffling time shuffles the codes.
    order = torch.randperm(windows.shape[1])
    assert torch.equal(model.encode(windows[:, order]), codes[:, order])


@pytest.mark.parametrize("name", list(MODELS))
def test_rebuilt_from_config_and_state_dict_gives_the_same_codes(name, windows):
    model = trained_once(MODELS[name](), windows)
    config = json.loads(json.dumps(model.config))
    rebuilt = type(model)(**config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config
    assert torch.equal(rebuilt.encode(windows), model.encode(windows))


def test_clips_longer_than_training_windows(windows):
    model = trained_once(PartTokenizer(**SMALL), windows)
    long = torch.randn(2, 416, FEATURE_DIM)
    codes = model.encode(long)
    assert codes.shape == (2, 104, 6)
    decoded = model.decode(codes)
    assert decoded.shape == (2, 416, FEATURE_DIM) and torch.isfinite(decoded).all()
    # Local attention: the first steps do not see the far end of a long clip.
    assert torch.equal(model.encode(long[:, :64])[:, :4], codes[:, :4])


def test_residual_quantize_dropout_drops_the_finer_layers(windows):
    torch.manual_seed(0)
    always = ResidualConvVQ(**SMALL_CONV, quantize_dropout=1.0).train()
    dropped = [always(windows).codes for _ in range(8)]
    assert any((codes[..., -1] == -1).all() for codes in dropped)
    assert all((codes[..., 0] >= 0).all() for codes in dropped)  # the first layer always stays
    never = ResidualConvVQ(**SMALL_CONV, quantize_dropout=0.0).train()
    assert all((never(windows).codes >= 0).all() for _ in range(4))
    # A coarse code (finer layers -1) still decodes.
    coarse = always.encode(windows)
    coarse[..., 2:] = -1
    assert torch.isfinite(always.decode(coarse)).all()


@pytest.mark.parametrize("name", ["six_parts", "pose", "conv_vq", "residual_vq"])
def test_bypassing_the_codebooks_never_touches_the_quantizer(name, windows, monkeypatch):
    """forward(quantize=False) decodes the continuous latents: no codes, no loss, the quantizer
    never called (that the reconstruction differs from the one through the codes is tested on
    the shipped model: an untrained decoder starts blind to its input)."""
    model = trained_once(MODELS[name](), windows).eval()
    through_codes = model(windows).reconstruction

    def refuse(*args, **kwargs):
        raise AssertionError("the quantizer was called")

    monkeypatch.setattr(model.quantizer, "forward", refuse)
    bypassed = model(windows, quantize=False)
    assert bypassed.codes is None and float(bypassed.aux_loss) == 0.0
    assert bypassed.reconstruction.shape == through_codes.shape
    with pytest.raises(ValueError, match="no codebooks to bypass"):
        MODELS["fsq"]()(windows, quantize=False)


def test_fsq_codes_cover_the_level_grid(windows):
    model = MODELS["fsq"]().train()
    codes = model(windows).codes
    assert codes.min() >= 0 and codes.max() < 100
    assert model.codebook_vectors().shape == (6, 100, 3)
    with pytest.raises(ValueError, match="codebook_size"):
        PartTokenizer(quantizer="fsq", fsq_levels=[8, 5, 5, 5], codebook_size=512)


def test_gradients_reach_the_encoder_straight_through(windows):
    """The encoder's output gets exactly the gradient of the code vectors (not rotated and
    scaled by the rotation trick, the quantizer library's default)."""
    model = trained_once(PartTokenizer(**SMALL), windows)
    step_mask = torch.ones(8, 16, dtype=torch.bool)
    latents = model._encode_latents(windows, torch.ones(8, 64, dtype=torch.bool), step_mask)
    latents = latents.detach().requires_grad_()
    quantized, codes, _ = model.quantizer(latents, step_mask)  # (8, 16, 6, d) each
    upstream = torch.randn_like(quantized)
    (quantized * upstream).sum().backward()
    assert torch.allclose(quantized, model.quantizer.lookup(codes), atol=1e-5)
    assert torch.allclose(latents.grad, upstream)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({**SIX_PARTS, "root": []}, "non-empty list"),
        ({name: joints for name, joints in SIX_PARTS.items() if name != "left_arm"}, "no part"),
        ({**SIX_PARTS, "root": [0, 22]}, "outside 0..21"),
        ({**SIX_PARTS, "root": [0, 0]}, "twice"),
        ({}, "non-empty mapping"),
        ({**SIX_PARTS, "root": "0"}, "non-empty list"),
    ],
)
def test_bad_parts_config_raises(parts, message):
    with pytest.raises(ValueError, match=message):
        PartTokenizer(**SMALL, parts=parts)


@pytest.mark.parametrize(
    "options",
    [
        dict(mode="audio"),
        dict(mode="pose", downsample=4),
        dict(quantizer="lfq"),
        dict(heads=3),
        dict(attention_window=0),
    ],
)
def test_bad_options_raise(options):
    with pytest.raises(ValueError):
        PartTokenizer(**{**SMALL, **options})


def test_bad_inputs_raise_feature_errors(windows):
    model = trained_once(PartTokenizer(**SMALL), windows)
    with pytest.raises(FeatureError, match="263"):
        model(torch.zeros(2, 64, 251))
    with pytest.raises(FeatureError, match="multiple of 4"):
        model.encode(torch.zeros(2, 63, FEATURE_DIM))
    with pytest.raises(FeatureError, match="mask"):
        model.encode(windows, torch.ones(8, 60, dtype=torch.bool))
    with pytest.raises(FeatureError, match=r"\[0, 32\)"):
        model.decode(torch.full((1, 4, 6), 32))
    with pytest.raises(FeatureError, match="codes"):
        model.decode(torch.zeros(1, 4, 5, dtype=torch.long))


@pytest.mark.parametrize(
    ("make", "factor"),
    [
        (lambda: PartTokenizer(**{**SMALL, "codebook_size": 16}), 7.0),
        (lambda: ConvVQ(**{**SMALL_CONV, "codebook_size": 16}), 30.0),
        (lambda: ResidualConvVQ(**{**SMALL_CONV, "codebook_size": 16}), 30.0),
    ],
    ids=["six_parts", "conv_vq", "residual_vq"],
)
def test_overfits_one_real_clip(make, factor, clips):
    """150 Adam steps on one real 64-frame window (16 steps: 16 codes per codebook) cut the
    feature error of the codes by a large factor (measured with these tiny sizes: 13, 63 and
    60; asserted with about half that margin)."""
    torch.manual_seed(0)
    target = clips[1][64:128][None]  # (1, 64, 263), a kick
    model = make().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    initial = None
    for _ in range(150):
        out = model(target)
        error = (out.reconstruction - target).square().mean()
        initial = error.item() if initial is None else initial
        optimizer.zero_grad()
        (error + out.aux_loss).backward()
        optimizer.step()
    final = (model.decode(model.encode(target)) - target).square().mean().item()
    assert initial / final > factor, f"{initial:.3f} -> {final:.4f}"


def test_attention_on_the_cpu_is_the_fused_kernels():
    """``attend``'s CPU path (two matrix products) gives what torch's fused attention gives:
    unmasked, with the part queries' bool mask, and with a padded window's additive bias;
    and the same gradients (the CPU path masks in place)."""
    torch.manual_seed(0)

    def split_heads(t: torch.Tensor) -> torch.Tensor:  # (N, L, 32) -> (N, 4, L, 8)
        return t.view(len(t), -1, 4, 8).transpose(1, 2)

    k, v = torch.randn(3, 7, 32), torch.randn(3, 7, 32)
    part_mask = torch.rand(5, 7) > 0.5
    part_mask[:, 0] = True  # every query reads some token
    steps = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 7])
    relative = torch.randn(4, 7, 7, requires_grad=True)  # learnt, as the relative bias is
    bias = torch.where(temporal_mask(steps, 2)[:, None], relative, float("-inf"))
    for mask, queries in ((None, 5), (part_mask, 5), (bias, 7)):
        q = torch.randn(3, queries, 32, requires_grad=True)
        fused = torch.nn.functional.scaled_dot_product_attention(
            split_heads(q), split_heads(k), split_heads(v), attn_mask=mask
        )  # (N, 4, L, 8)
        expected = fused.transpose(1, 2).reshape(3, queries, 32)
        out = attend(q, k, v, 4, mask, 0.0)
        assert torch.allclose(out, expected, atol=1e-5)
        weights = torch.randn_like(out)
        inputs = (q, relative) if mask is bias else (q,)
        gradients = torch.autograd.grad((out * weights).sum(), inputs, retain_graph=True)
        expected_gradients = torch.autograd.grad((expected * weights).sum(), inputs)
        for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
            assert torch.allclose(gradient, expected_gradient, atol=1e-5)


@pytest.mark.parametrize("window", [1, 3, 8])
@pytest.mark.parametrize("steps", [5, 33, 50])
def test_local_attention_in_blocks_is_the_masked_attention_over_all_steps(window, steps):
    """``attend_locally`` (long clips) gives what ``attend`` gives with the full S x S mask and
    relative bias (training windows): values and gradients, with padded steps at the end and
    at the start of rows, a step count that is not a whole number of blocks, several groups."""
    torch.manual_seed(window * 100 + steps)
    batch, groups, heads = 3, 5, 4
    layer = SpaceTimeLayer(32, heads, 2, 0.0, window)
    relative = torch.randn(heads, 2 * window + 1, requires_grad=True)
    step_mask = torch.ones(batch, steps, dtype=torch.bool)
    step_mask[1, steps // 2 :] = False
    step_mask[2, :3] = False
    q, k, v = (torch.randn(batch * groups, steps, 32, requires_grad=True) for _ in range(3))
    layer.relative_bias = torch.nn.Parameter(relative)
    bias = layer.time_bias(temporal_mask(step_mask, window), groups)  # (B * G, h, S, S)
    expected = attend(q, k, v, heads, bias, 0.0)
    blocked = attend_locally(q, k, v, heads, layer.relative_bias, step_mask, 0.0)
    assert blocked.shape == expected.shape == (batch * groups, steps, 32)
    assert torch.allclose(blocked, expected, atol=1e-5)
    weights = torch.randn_like(expected)
    inputs = (q, k, v, layer.relative_bias)
    gradients = torch.autograd.grad((blocked * weights).sum(), inputs)
    expected_gradients = torch.autograd.grad((expected * weights).sum(), inputs)
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        assert torch.allclose(gradient, expected_gradient, atol=1e-4)


def test_a_long_real_clip_encodes_and_decodes_as_through_the_full_mask(clips, monkeypatch):
    """Past eight attention windows of steps the model attends in blocks: a long real clip (all
    the HumanML3D clips end to end) gets the codes and the decoding that the full S x S mask
    gives, also with a shorter clip padded beside it in the batch."""
    torch.manual_seed(0)
    model = PartTokenizer(**SMALL)
    for name, parameter in model.named_parameters():
        if "relative_bias" in name or "to_out" in name:  # zero at the start: make them count
            torch.nn.init.normal_(parameter, std=0.3)
    long = torch.cat(clips)[: len(torch.cat(clips)) // 4 * 4]
    batch = torch.zeros(2, len(long), FEATURE_DIM)
    batch[0], batch[1, :200] = long, long[:200]
    mask = torch.zeros(2, len(long), dtype=torch.bool)
    mask[0], mask[1, :200] = True, True
    assert len(long) // 4 > 8 * SMALL["attention_window"]
    model = trained_once(model, batch[:, :64])
    codes = model.encode(batch, mask)
    decoded = model.decode(codes)

    def full_mask(q, k, v, heads, relative_bias, step_mask, dropout):
        layer = SpaceTimeLayer(q.shape[-1], heads, 1, 0.0, (relative_bias.shape[-1] - 1) // 2)
        layer.relative_bias = torch.nn.Parameter(relative_bias)
        groups = len(q) // len(step_mask)
        bias = layer.time_bias(temporal_mask(step_mask, layer.window), groups)
        return attend(q, k, v, heads, bias, dropout)

    monkeypatch.setattr(model_module, "attend_locally", full_mask)
    assert torch.equal(model.encode(batch, mask), codes)
    assert torch.allclose(model.decode(codes), decoded, atol=1e-4)


def test_part_queries_folded_into_the_key_map_read_what_keys_and_values_give():
    """``QueryPooling.read_folded`` (few queries over many tokens: the parts over the joints)
    equals attention over the mapped keys and values: values and gradients, with the parts'
    mask, with every weight and bias non-zero."""
    torch.manual_seed(0)
    mask = torch.zeros(6, 22, dtype=torch.bool)
    for part, joints in enumerate(SIX_PARTS.values()):
        mask[part, list(joints)] = True
    pooling = QueryPooling(6, 32, 16, 4, 2, 0.0, mask)
    for parameter in pooling.parameters():
        torch.nn.init.normal_(parameter)
    tokens = torch.randn(10, 22, 16, requires_grad=True)  # (B * S, N, C)
    q = pooling.to_q(pooling.query_norm(pooling.queries))
    k, v = pooling.to_kv(tokens).chunk(2, dim=-1)
    expected = attend(q.expand(10, -1, -1), k, v, 4, mask, 0.0)
    folded = pooling.read_folded(q, tokens, 0.0)
    assert folded.shape == expected.shape == (10, 6, 32)
    assert torch.allclose(folded, expected, atol=1e-4)
    weights = torch.randn_like(expected)
    inputs = (tokens, pooling.queries, pooling.to_kv.weight, pooling.to_kv.bias)
    gradients = torch.autograd.grad((folded * weights).sum(), inputs, retain_graph=True)
    expected_gradients = torch.autograd.grad((expected * weights).sum(), inputs)
    # (the key bias adds a constant over the tokens: the softmax drops it, its gradient is 0)
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        assert torch.allclose(gradient, expected_gradient, atol=1e-3)


@pytest.mark.parametrize("name", ["six_parts", "residual_vq"])
@pytest.mark.parametrize("training", [True, False])
def test_mixed_precision_quantizes_in_float32(name, training, windows):
    """Under bfloat16 autocast (``--trainer.precision bf16-mixed``) a quantizer picks the codes
    and makes the EMA codebook updates it makes in float32 (vector-quantize-pytorch turns
    autocast off on a GPU only: on a CPU its code distances ran in bfloat16)."""
    model = trained_once(MODELS[name](), windows)
    latents = model(windows).latents.detach()  # (B, S, P, d) of real clips
    step_mask = torch.ones(latents.shape[:2], dtype=torch.bool)
    results = []
    for autocast in (False, True):
        quantizer = copy.deepcopy(model.quantizer).train(training)
        torch.manual_seed(1)  # dead codes are replaced by random vectors
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            quantized, codes, _ = quantizer(latents, step_mask)
        results.append((quantized, codes, quantizer.codebook_vectors()))
    (quantized, codes, codebooks), (mixed, mixed_codes, mixed_codebooks) = results
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed_codes, codes)
    assert torch.equal(mixed, quantized) and torch.equal(mixed_codebooks, codebooks)
