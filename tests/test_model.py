"""The MMT: sizes of the registered variants, the attention fusion, the ablation switches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_mer.errors import UserError  # noqa: E402
from edge_mer.model.config import ABLATIONS, MMTConfig, model_config  # noqa: E402
from edge_mer.model.mmt import MMT, Attention, Dropout, count_parameters, flops_per_sample, info_nce  # noqa: E402
from edge_mer.train.loop import TrainConfig, augment, class_weights, mixup, turn  # noqa: E402


def _inputs(b: int = 4, s: int = 112):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, s, s, generator=g), torch.randn(b, 1, s, s, generator=g)


def _export(model, m, t, path) -> str:
    """``model`` written as ONNX to ``path`` (inputs motion and texture, output logits, any batch)."""
    torch.onnx.export(model, (m, t), str(path), input_names=["motion", "texture"], output_names=["logits"],
                      dynamic_axes={"motion": {0: "b"}, "texture": {0: "b"}}, dynamo=False)
    return str(path)


def _runs_alike_in_onnxruntime(model, folder) -> None:
    """``model`` exported (traced at batch 2) gives the same logits under ONNX Runtime as in torch at batch 3."""
    ort = pytest.importorskip("onnxruntime")
    model.eval()
    sess = ort.InferenceSession(_export(model, *_inputs(2), folder / "m.onnx"), providers=["CPUExecutionProvider"])
    m3, t3 = _inputs(3)  # another batch than the traced one
    with torch.no_grad():
        assert abs(sess.run(["logits"], {"motion": m3.numpy(), "texture": t3.numpy()})[0]
                   - model(m3, t3).numpy()).max() < 1e-4


def test_edge_size_budget():
    cfg = model_config("mmt_small")
    assert count_parameters(MMT(cfg)) <= 3_000_000
    assert flops_per_sample(cfg) <= 0.5e9
    assert count_parameters(MMT(model_config("mmt_test"))) < count_parameters(MMT(cfg))


def test_forward_and_patch_weights():
    model = MMT(model_config("mmt_test")).eval()
    m, t = _inputs()
    logits = model(m, t)
    assert logits.shape == (4, 3)
    weights = model.patch_weights(m, t)
    assert set(weights) == {"motion_16", "motion_28", "texture_16", "texture_28"}
    for w in weights.values():
        assert torch.allclose(w.sum(-1), torch.ones(4), atol=1e-5) and (w >= 0).all()


def test_fusion_weights_learn_only_with_fused_pooling():
    for pooling, learns in (("fused", True), ("cls", False)):
        model = MMT(model_config("mmt_test", ablation="full" if pooling == "fused" else "cls-pooling"))
        logits, contrast = model.forward_train(*_inputs())
        (logits.sum() + contrast).backward()
        grads = [b.fuse.grad for b in model.branches.values()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads) == learns


def test_ablation_switches():
    assert set(ABLATIONS) == {"full", "single-scale", "motion-only", "texture-only", "cls-pooling",
                              "no-contrastive"}
    assert model_config("mmt_small", ablation="single-scale").patch_sizes == (14,)
    motion_only = MMT(model_config("mmt_test", ablation="motion-only")).eval()
    m, t = _inputs()
    assert torch.equal(motion_only(m, t), motion_only(m, torch.zeros_like(t)))  # texture is ignored
    assert motion_only.cfg.contrastive_weight == 0.0
    no_con = MMT(model_config("mmt_test", ablation="no-contrastive"))
    assert float(no_con.forward_train(m, t)[1].detach()) == 0.0
    full = MMT(model_config("mmt_test"))
    assert float(full.forward_train(m, t)[1].detach()) > 0.0


def test_info_nce_prefers_matching_pairs():
    a = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    same = info_nce(a, a, 0.1)
    shuffled = info_nce(a, a[torch.randperm(8, generator=torch.Generator().manual_seed(2))], 0.1)
    assert same < shuffled


def test_flip_negates_horizontal_motion():
    m = torch.zeros(1, 3, 8, 8)
    m[0, 0, :, :4] = 1.0  # rightward motion on the left half
    cfg = TrainConfig(flip=True, max_shift=0, gain=(1.0, 1.0))
    for seed in range(20):  # find a draw that flips
        out, _ = augment(m, torch.zeros(1, 1, 8, 8), cfg, torch.Generator().manual_seed(seed))
        if not torch.equal(out, m):
            assert out[0, 0, :, 4:].eq(-1).all() and out[0, 0, :, :4].eq(0).all()
            return
    pytest.fail("no flip in 20 draws")


def _grid(s: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (x right, y down) about the crop's centre."""
    c = torch.arange(s, dtype=torch.float32) - (s - 1) / 2
    return c[None, :].expand(s, s), c[:, None].expand(s, s)


def test_turn_moves_the_flow_vectors_with_the_face():
    s = 32
    x, y = _grid(s)
    inner = (x ** 2 + y ** 2) < 8 ** 2  # away from the border, where motion enters from outside
    # a face moving right everywhere, a bright spot right of the centre: turned a quarter clockwise on
    # screen (x to y), the spot is below the centre and the face moves down, at the zoom's scale
    motion = torch.zeros(1, 3, s, s)
    motion[0, 0] = 1.0
    motion[0, 2] = 0.5
    texture = torch.where((x - 8) ** 2 + y ** 2 < 4, 1.0, 0.0)[None, None]
    m, t = turn(motion, texture, torch.tensor([torch.pi / 2]), torch.tensor([1.25]))
    assert torch.allclose(m[0, 0][inner], torch.zeros(()), atol=1e-4)
    assert torch.allclose(m[0, 1][inner], torch.tensor(1.25), atol=1e-4)
    assert torch.allclose(m[0, 2][inner], torch.tensor(0.5), atol=1e-4)  # strain keeps its value
    cy, cx = divmod(int(t[0, 0].argmax()), s)
    assert abs(cx - (s - 1) / 2) < 1.5 and cy - (s - 1) / 2 == pytest.approx(8 * 1.25, abs=1.5)
    # an expansion (u, v) = (x, y) / 10 looks the same however far it is turned or scaled: positions and
    # vectors turn and scale together
    expand = torch.zeros(2, 3, s, s)
    expand[:, 0], expand[:, 1] = x / 10, y / 10
    out, _ = turn(expand, torch.zeros(2, 1, s, s), torch.tensor([0.4, -0.3]), torch.tensor([0.9, 1.1]))
    assert torch.allclose(out[:, :2, inner], expand[:, :2, inner], atol=1e-3)
    # a swirl turned by anything but zero differs from the input only if vectors were not turned
    swirl = torch.zeros(1, 3, s, s)
    swirl[0, 0], swirl[0, 1] = -y / 10, x / 10
    out, _ = turn(swirl, torch.zeros(1, 1, s, s), torch.tensor([0.7]), torch.tensor([1.0]))
    assert torch.allclose(out[0, :2, inner], swirl[0, :2, inner], atol=1e-3)


def test_rotation_and_zoom_are_drawn_per_sample_and_checked():
    m = torch.zeros(8, 3, 16, 16)
    m[:, 0] = 1.0
    cfg = TrainConfig(flip=False, max_shift=0, gain=(1.0, 1.0), rotate=20.0, zoom=(0.9, 1.1))
    out, _ = augment(m, torch.zeros(8, 1, 16, 16), cfg, torch.Generator().manual_seed(0))
    centre = out[:, :2, 8, 8]
    assert len({round(float(v), 4) for v in centre[:, 1]}) == 8  # eight different turns
    assert (centre.norm(dim=1) >= 0.9 - 1e-4).all() and (centre.norm(dim=1) <= 1.1 + 1e-4).all()
    assert (centre[:, 1].abs() <= torch.sin(torch.deg2rad(torch.tensor(20.0))) * 1.1 + 1e-4).all()
    with pytest.raises(UserError, match="rotate"):
        TrainConfig(rotate=-5.0)
    with pytest.raises(UserError, match="zoom"):
        TrainConfig(zoom=(1.2, 0.9))


def test_mixup_blends_both_modalities_and_the_targets_alike():
    b = 16
    value = torch.arange(1, b + 1, dtype=torch.float32)
    motion = value.view(b, 1, 1, 1).expand(b, 3, 4, 4).clone()
    texture = -2 * value.view(b, 1, 1, 1).expand(b, 1, 4, 4).clone()
    targets = torch.eye(b)  # sample i is "class" i, so a target row shows who was blended, and how much
    m, t, y = mixup(motion, texture, targets, 0.4, torch.Generator().manual_seed(3))
    assert torch.allclose(y.sum(1), torch.ones(b))
    assert (y.diagonal() >= 0.5).all()  # each sample keeps the larger part of itself
    assert (y.diagonal() < 1 - 1e-3).sum() >= b // 2  # and most are really blended
    assert torch.allclose(m[:, 0, 0, 0], y @ value, atol=1e-5)  # the motion is blended by the target's shares
    assert torch.allclose(t, -2 * m[:, :1], atol=1e-5)  # and the texture by the same
    with pytest.raises(UserError, match="mixup"):
        TrainConfig(mixup=-1.0)


def test_class_weights_make_the_rare_classes_count_more_by_the_chosen_power():
    labels = np.array([0] * 64 + [1] * 16 + [2] * 4)
    root = class_weights(labels, 3)  # the recipe: 1/sqrt(frequency), mean 1 over the classes
    assert torch.allclose(root / root[0], torch.tensor([1.0, 2.0, 4.0])) and float(root.mean()) == pytest.approx(1)
    balanced = class_weights(labels, 3, 1.0)  # 1/frequency: each class weighs as much in all
    assert torch.allclose(balanced / balanced[0], torch.tensor([1.0, 4.0, 16.0]))
    assert torch.allclose(balanced * torch.tensor([64.0, 16.0, 4.0]), balanced[0] * 64)
    assert class_weights(np.array([0, 0, 2]), 3, 1.0)[1] == 0  # a class without samples weighs nothing
    with pytest.raises(UserError, match="class_power"):
        TrainConfig(class_power=3.0)


def test_config_round_trip_and_checks():
    cfg = model_config("mmt_small")
    assert MMTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserError, match="does not divide"):
        MMTConfig(size=112, patch_sizes=(15,))
    with pytest.raises(UserError, match="no patch size"):
        model_config("mmt_small", size=50)
    assert model_config("mmt_test", size=64).patch_sizes == (16,)


def test_ststnet_is_the_papers_shallow_three_stream_cnn():
    from edge_mer.model.build import build_model
    from edge_mer.model.build import flops_per_sample as any_flops

    cfg = model_config("ststnet")
    model = build_model(cfg).eval()
    # 3x3 convolutions with 3, 5 and 8 filters on 3 channels and one 400 -> 3 layer: 1,651 weights (the paper
    # counts 1,670)
    assert count_parameters(model) == 1651
    assert any_flops(cfg) < 1e6
    m, t = _inputs(2)
    logits = model(m, t)
    assert logits.shape == (2, 3)
    assert torch.equal(model(m, torch.zeros_like(t)), logits)  # motion only: the texture changes nothing
    small = torch.nn.functional.adaptive_avg_pool2d(m, 28)
    assert torch.allclose(model(small, t[..., :28, :28]), logits, atol=1e-6)  # 112 is pooled to the paper's 28
    with pytest.raises(UserError, match="ablations are of the MMT"):
        model_config("ststnet", ablation="cls-pooling")


def _reads_the_four_regions_only(model, m, t) -> None:
    """Motion added on the top of the forehead (above every region) leaves ``model``'s answer as it was; motion
    added at the point of each region changes it."""
    from edge_mer.model.mmt import HT_REGIONS

    base = model(m, t)
    forehead = m.clone()
    forehead[..., :6, 48:64] += 5.0
    assert torch.allclose(model(forehead, t), base, atol=1e-6)
    for fx, fy in HT_REGIONS:
        marked = m.clone()
        x, y = round(fx * 112), round(fy * 112)
        marked[..., y - 2:y + 2, x - 2:x + 2] += 5.0
        assert not torch.allclose(model(marked, t), base, atol=1e-4)


def test_the_regional_ststnet_reads_the_eyes_and_mouth_corners_at_twice_the_resolution(tmp_path):
    """``ststnet_regions``: the three streams on four 28 x 28 regions of the motion at 56 (one set of filters for
    all four); motion outside the regions (the top of the forehead) changes nothing, motion in any of them does,
    and as an MMT's partner it trains and exports as one graph that ONNX Runtime runs alike."""
    from edge_mer.model.build import build_model
    from edge_mer.model.build import flops_per_sample as any_flops

    cfg = model_config("ststnet_regions")
    model = build_model(cfg).eval()
    # the same 448 filter weights as the paper's, and a 4 x 400 -> 3 layer
    assert count_parameters(model) == 448 + 4 * 400 * 3 + 3
    assert any_flops(cfg) == 4 * any_flops(model_config("ststnet"))  # four 28 x 28 inputs and four 400s
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # weights of one sign, so that a mark cannot cancel out by chance
            p.copy_(torch.rand_like(p))
        m, t = _inputs(1)
        m = m.abs()
        _reads_the_four_regions_only(model, m, t)
    with pytest.raises(UserError, match="four regions"):
        model_config("ststnet", changes={"side": 40})
    ens = model_config("mmt_test", ablation="motion-only", changes={"ensemble_with": "ststnet_regions"})
    assert any_flops(ens) == flops_per_sample(ens) + any_flops(cfg)
    pair = build_model(ens).eval()
    assert pair.partner.cfg.side == 56 and count_parameters(pair.partner) == count_parameters(model)
    logits, _ = pair.train().forward_train(*_inputs(4))
    assert logits.shape == (2, 4, 3)
    _runs_alike_in_onnxruntime(pair, tmp_path)


def test_the_wide_regional_ststnet_has_twice_the_filters_and_reads_the_same_regions(tmp_path):
    """``ststnet_regions_wide`` (``stst_width=2``): 6, 10 and 16 filters a stream, so twice the weights and the
    FLOPs of ``ststnet_regions``; it still reads the four regions only, exports and runs alike in ONNX Runtime,
    and a width that is not a whole number from 1 is one line."""
    from edge_mer.model.build import build_model
    from edge_mer.model.build import flops_per_sample as any_flops

    cfg = model_config("ststnet_regions_wide")
    model = build_model(cfg).eval()
    assert [c.out_channels for c in model.streams] == [6, 10, 16]
    assert count_parameters(model) == 2 * 448 + 4 * 800 * 3 + 3
    assert any_flops(cfg) == 2 * any_flops(model_config("ststnet_regions"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p))
        m, t = _inputs(1)
        _reads_the_four_regions_only(model, m.abs(), t)
    _runs_alike_in_onnxruntime(build_model(cfg), tmp_path)  # its own initial weights: logits of a usual size
    for bad in (0, 1.5, "2"):
        with pytest.raises(UserError, match="stst_width must be a whole number"):
            model_config("ststnet_regions", changes={"stst_width": bad})


def test_an_ststnet_with_asymmetry_reads_what_a_face_moves_on_one_side_only(tmp_path):
    """``asymmetry``: three more input channels, the motion less its mirror image (u negated). A face that moves
    symmetrically leaves them at zero, so their filters do not change its answer; a smile of one mouth corner
    does. The mirror exports (a constant Gather) and runs alike in ONNX Runtime, PTQ finds the three streams as
    the layers that read the motion, and an MMT refuses the option in one line."""
    onnx = pytest.importorskip("onnx")
    from edge_mer.model.build import build_model
    from edge_mer.model.build import flops_per_sample as any_flops
    from edge_mer.model.mmt import HT_REGIONS, Mirror
    from edge_mer.quant.ptq import motion_readers

    cfg = model_config("ststnet_regions", changes={"asymmetry": True})
    model = build_model(cfg).eval()
    assert [c.in_channels for c in model.streams] == [6, 6, 6]
    assert count_parameters(model) == count_parameters(build_model(model_config("ststnet_regions"))) + 3 * 9 * 16
    m, t = _inputs(1)
    mirror = Mirror(112)
    symmetric = (m + mirror(m)) / 2
    assert torch.allclose(mirror(symmetric), symmetric)
    one_sided = symmetric.clone()
    fx, fy = HT_REGIONS[3]  # one mouth corner
    x, y = round(fx * 112), round(fy * 112)
    one_sided[:, 0, y - 4:y + 4, x - 4:x + 4] += 2.0
    with torch.no_grad():
        before = model(symmetric, t), model(one_sided, t)
        for conv in model.streams:
            conv.weight[:, 3:] += 1.0  # the filters of the asymmetry channels only
        after = model(symmetric, t), model(one_sided, t)
    assert torch.allclose(before[0], after[0], atol=1e-5)
    assert not torch.allclose(before[1], after[1], atol=1e-3)
    assert any_flops(cfg) > any_flops(model_config("ststnet_regions"))
    _runs_alike_in_onnxruntime(build_model(cfg), tmp_path)
    readers = motion_readers(onnx.load(str(tmp_path / "m.onnx")))
    assert len(readers) == 3 and {n.op_type for n in readers} == {"Conv"}
    with pytest.raises(UserError, match="asymmetry is an STSTNet's input"):
        model_config("mmt_small", changes={"asymmetry": True})


def test_the_mmt_can_read_its_patch_tokens_from_the_eyes_and_mouth_corners(tmp_path):
    """``regions``: each branch cuts its patch tokens from the four regions ``ststnet_regions`` reads (S/2 squares
    on the eyes and mouth corners, one embedding for all four): as many tokens and weights as the whole face,
    motion on the top of the forehead changes nothing, motion in each region does; it exports as one graph."""
    changes = {"patch_sizes": [14, 28], "modalities": ["motion"]}
    whole = MMT(model_config("mmt_test", changes=changes)).eval()
    cfg = model_config("mmt_test", changes={**changes, "regions": True})
    model = MMT(cfg).eval()
    assert count_parameters(model) == count_parameters(whole) and flops_per_sample(cfg) == flops_per_sample(
        whole.cfg)
    model.load_state_dict(whole.state_dict())  # the same weights: only where the tokens come from differs
    m, t = _inputs(1)
    with torch.no_grad():
        assert not torch.allclose(whole(m, t), model(m, t), atol=1e-4)
        _reads_the_four_regions_only(model, m, t)
        forehead = m.clone()
        forehead[..., :6, 48:64] += 5.0
        assert not torch.allclose(whole(forehead, t), whole(m, t), atol=1e-4)  # the whole face does see it
    with pytest.raises(UserError, match="regions' side 56"):
        model_config("mmt_test", changes={"regions": True})  # its 16-pixel patches do not tile a 56 region
    _runs_alike_in_onnxruntime(model, tmp_path)


def test_the_mmt_can_pool_its_tokens_before_normalising_them():
    """``pool_then_norm``: the same weights (a checkpoint of either loads into the other) pooled before the final
    LayerNorm instead of after, so it answers differently; it trains, every weight of its branches learning."""
    whole = MMT(model_config("mmt_test")).eval()
    model = MMT(model_config("mmt_test", changes={"pool_then_norm": True})).eval()
    model.load_state_dict(whole.state_dict())
    m, t = _inputs(2)
    with torch.no_grad():
        assert not torch.allclose(model(m, t), whole(m, t), atol=1e-4)
    logits, aux = model.train().forward_train(*_inputs(4))
    (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])) + aux).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.branches.parameters())


@pytest.mark.parametrize("stem", ["conv", "strided"])
def test_the_mmt_can_read_its_motion_through_a_conv_stem(tmp_path, stem):
    """``stem="conv"``: 3 x 3 filters and a 2 x 2 max-pool before patches of half the side; ``"strided"``: the
    filters at a stride of 2 instead: the same tokens, the weights the stem adds, the FLOPs (the strided stem a
    quarter of the conv stem's filter work); a model without it loads its checkpoints as before; it trains and
    exports."""
    from edge_mer.model.mmt import STEM_FILTERS

    plain_cfg = model_config("mmt_test", ablation="motion-only")
    cfg = model_config("mmt_test", ablation="motion-only", changes={"stem": stem})
    plain, model = MMT(plain_cfg), MMT(cfg)
    added = sum(STEM_FILTERS * 3 * 9 + STEM_FILTERS + (STEM_FILTERS * (p // 2) ** 2 - 3 * p * p) * cfg.dim
                for p in cfg.patch_sizes)
    assert count_parameters(model) == count_parameters(plain) + added
    assert [b.pos.shape for b in model.branches.values()] == [b.pos.shape for b in plain.branches.values()]
    assert flops_per_sample(cfg) > flops_per_sample(plain_cfg)
    conv, strided = (model_config("mmt_test", ablation="motion-only", changes={"stem": s})
                     for s in ("conv", "strided"))
    filters = 2 * cfg.size ** 2 * 3 * 9 * STEM_FILTERS * len(cfg.patch_sizes)  # the conv stem's, at S
    assert flops_per_sample(conv) - flops_per_sample(strided) == filters * 3 // 4
    assert not any(".stem." in k for k in plain.state_dict())  # a plain checkpoint's keys as before
    assert any(".stem." in k for k in model.state_dict())
    logits, aux = model.train().forward_train(*_inputs(4))
    (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])) + aux).backward()
    assert all(p.grad is not None for p in model.branches.parameters())
    with pytest.raises(UserError, match="patch sizes must be even"):
        model_config("mmt_test", changes={"stem": stem, "patch_sizes": [7, 28]})
    branch, x = next(iter(model.branches.values())), torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        first = branch.stem[0]
        filtered = torch.relu(torch.nn.functional.conv2d(x, first.weight, first.bias, padding=1))  # every position
        if stem == "conv":  # the filters' rectified outputs, the largest of each 2 x 2
            assert torch.equal(branch.stem(x), torch.nn.functional.max_pool2d(filtered, 2))
        else:  # the filters at every other position
            assert torch.allclose(branch.stem(x), filtered[..., ::2, ::2], atol=1e-6)
    _runs_alike_in_onnxruntime(model, tmp_path)


def test_mmt_small_regions_reads_the_regions_through_its_conv_stem_within_the_edge_budget(tmp_path):
    """``mmt_small_regions`` (motion only, as the recipe trains it): mmt_small's tokens cut from the four regions
    through the conv stem; within the edge budget (<= 3 M weights, <= 0.5 GFLOPs); motion on the top of the
    forehead changes nothing, motion in each region does; it exports as one graph ONNX Runtime runs alike."""
    cfg = model_config("mmt_small_regions", size=112, ablation="motion-only")
    assert cfg.regions and cfg.stem == "strided" and cfg.modalities == ("motion",)
    torch.manual_seed(0)
    model = MMT(cfg).eval()
    assert count_parameters(model) <= 3_000_000 and flops_per_sample(cfg) <= 0.5e9
    m, t = _inputs(1)
    with torch.no_grad():
        _reads_the_four_regions_only(model, m, t)
    _runs_alike_in_onnxruntime(model, tmp_path)
    pair = model_config("mmt_small_regions_ens_regions", size=112, ablation="motion-only")
    assert replace(pair, ensemble_with="") == cfg and pair.ensemble_with == "ststnet_regions"


def test_htnet_is_its_authors_configuration_with_regions_from_the_aligned_crop():
    from edge_mer.model.build import build_model
    from edge_mer.model.mmt import HT_REGIONS

    model = build_model(model_config("htnet")).eval()
    # width 256 -> 512 -> 1024 over 2, 2 and 10 blocks: 139.6 M weights, as its code builds it
    assert count_parameters(model) == 139_583_788
    # 28 x 28 input, 7 x 7 patches: a 4 x 4 token map in 4 x 4 tiles, then 2 x 2, then one: one token a tile
    assert [lvl.pos.numel() for lvl in model.levels] == [1, 1, 1]
    wide = build_model(model_config("htnet_56"))
    assert [lvl.pos.numel() for lvl in wide.levels] == [4, 4, 4]  # the labelled variant: four tokens a tile
    m, t = _inputs(2)
    logits = model(m, t)
    assert logits.shape == (2, 3)
    assert torch.equal(model(m, torch.zeros_like(t)), logits)
    # a mark on each canonical landmark lands in its own quadrant of the tiled input, image left first
    for k, (fx, fy) in enumerate(HT_REGIONS):
        motion = torch.zeros(1, 3, 112, 112)
        motion[..., round(fy * 112) - 2:round(fy * 112) + 2, round(fx * 112) - 2:round(fx * 112) + 2] = 1.0
        tiled = model.regions(motion)[0, 0]
        quadrants = [tiled[:14, :14], tiled[:14, 14:], tiled[14:, :14], tiled[14:, 14:]]
        assert [float(q.sum()) > 0 for q in quadrants] == [i == k for i in range(4)], k


def test_attention_is_softmax_of_scaled_query_key_products_per_head():
    att = Attention(dim=8, heads=2, dropout=0.0).eval()
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(4))
    out, attn = att(x)
    q, k, v = att.qkv(x).split(8, -1)  # (B, N, 8) each; head h owns columns 4h..4h+3
    heads = []
    for h in range(2):
        c = slice(4 * h, 4 * h + 4)
        ref = torch.softmax(q[..., c] @ k[..., c].transpose(1, 2) / 2.0, -1)  # sqrt(4) = 2
        assert torch.allclose(attn[:, h], ref, atol=1e-6)
        heads.append(ref @ v[..., c])
    assert torch.allclose(out, att.proj(torch.cat(heads, -1)), atol=1e-5)


def test_dropout_drops_its_share_keeps_the_mean_and_repeats_with_the_seed():
    drop = Dropout(0.1)
    x = torch.ones(200_000)
    torch.manual_seed(7)
    y = drop(x)
    assert abs(float((y == 0).float().mean()) - 26 / 256) < 0.005  # p = 0.1 rounds to 26 of 256
    assert abs(float(y.mean()) - 1.0) < 0.01
    torch.manual_seed(7)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)  # the next call draws another mask
    assert torch.equal(drop.eval()(x), x)
    x = torch.ones(1000, requires_grad=True)
    drop.train()(x).sum().backward()
    assert torch.allclose(torch.unique(x.grad), torch.tensor([0.0, 256 / 230]))
    assert torch.equal(Dropout(0.0)(x), x)


@pytest.mark.parametrize("ablation", ["motion-only", "texture-only"])
def test_a_one_modality_model_exports_with_both_inputs(ablation, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = MMT(model_config("mmt_test", ablation=ablation)).eval()
    m, t = _inputs(1)
    assert [i.name for i in onnx.load(_export(model, m, t, tmp_path / "m.onnx")).graph.input] == ["motion", "texture"]


@pytest.mark.parametrize("name", ["mmt_test", "ststnet", "htnet_56"])
def test_motion_rms_makes_the_model_blind_to_how_strongly_a_subject_moves(name, tmp_path):
    from edge_mer.model.build import build_model

    small = {"dim": 12, "heads": 3} if name == "htnet_56" else {}
    fixed = build_model(model_config(name, changes=small)).eval()
    scaled = build_model(model_config(name, changes={**small, "motion_rms": 0.2})).eval()
    scaled.load_state_dict(fixed.state_dict())
    m, t = _inputs(2)
    m = m * 0.3  # flow of RMS ~0.4 units, as a strong subject's
    with torch.no_grad():
        # the same expression at half and double strength: one answer with motion_rms, two without
        assert torch.allclose(scaled(0.5 * m, t), scaled(2.0 * m, t), atol=1e-5)
        if name != "htnet_56":  # HTNet's first step, a LayerNorm of each patch, already removes a gain
            assert not torch.allclose(fixed(0.5 * m, t), fixed(2.0 * m, t), atol=1e-3)
        rms = scaled.rescale(m)[:, :2].pow(2).sum(1).mean((1, 2)).sqrt()
        assert torch.allclose(rms, torch.full((2,), 0.2), atol=1e-5)
        still = 1e-4 * m  # a still face: its noise is lifted at most x4, not to the target
        assert torch.allclose(scaled.rescale(still), 4 * still)
    if name != "mmt_test":
        return
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(_export(scaled, m, t, tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for k in (0.5, 2.0):
        got = sess.run(["logits"], {"motion": (k * m).numpy(), "texture": t.numpy()})[0]
        assert abs(got - scaled(k * m, t).detach().numpy()).max() < 1e-4


def test_motion_rms_is_checked():
    with pytest.raises(UserError, match="motion_rms"):
        model_config("mmt_small", changes={"motion_rms": -1.0})


def test_an_ensemble_predicts_from_both_members_and_trains_each_on_its_own_loss(tmp_path):
    import numpy as np

    from edge_mer.model.build import build_model
    from edge_mer.model.build import flops_per_sample as any_flops
    from edge_mer.model.ensemble import Ensemble
    from edge_mer.train.loop import train_model

    cfg = model_config("mmt_test", ablation="motion-only", changes={"ensemble_with": "ststnet"})
    assert MMTConfig.from_dict(cfg.to_dict()) == cfg
    model = build_model(cfg).eval()
    assert isinstance(model, Ensemble) and model.partner.cfg.arch == "ststnet"
    assert count_parameters(model) == count_parameters(model.lead) + 1651
    assert any_flops(cfg) == flops_per_sample(cfg) + any_flops(model_config("ststnet"))
    m, t = _inputs()
    with torch.no_grad():
        probs = torch.softmax(model(m, t), -1)
        lead, partner = torch.softmax(model.lead(m, t), -1), torch.softmax(model.partner(m, t), -1)
    both = (lead * partner).sqrt()  # the normalised geometric mean of the members' probabilities
    assert torch.allclose(probs, both / both.sum(-1, keepdim=True), atol=1e-5)
    # each member is trained on its own loss: the partner's loss does not move the lead's weights
    logits, _ = model.train().forward_train(m, t)
    assert logits.shape == (2, 4, 3)
    torch.nn.functional.cross_entropy(logits[1], torch.tensor([0, 1, 2, 0])).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.lead.parameters())
    assert all(p.grad is not None and p.grad.any() for p in model.partner.parameters())
    # and it trains, exports and runs in ONNX Runtime as one graph
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    motion = (rng.normal(0, 0.05, (12, 3, 112, 112)) + labels[:, None, None, None] * 0.2).astype(np.float32)
    texture = rng.normal(0, 1, (12, 1, 112, 112)).astype(np.float32)
    trained = train_model(cfg, TrainConfig(epochs=2, batch_size=4), motion, texture, labels, seed=0)
    assert isinstance(trained, Ensemble)
    ort = pytest.importorskip("onnxruntime")
    m1, t1 = torch.from_numpy(motion[:2]), torch.from_numpy(texture[:2])
    got = ort.InferenceSession(_export(trained, m1, t1, tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"motion": motion[:2], "texture": texture[:2]})[0]
    with torch.no_grad():
        assert abs(got - trained(m1, t1).numpy()).max() < 1e-4
    # a baseline takes a partner as well: the regional STSTNet beside the whole-face one, one graph
    pair = model_config("ststnet_regions", changes={"ensemble_with": "ststnet"})
    stst = build_model(pair).eval()
    assert isinstance(stst, Ensemble) and (stst.lead.tiles, stst.partner.tiles) == (4, 1)
    assert any_flops(pair) == any_flops(model_config("ststnet_regions")) + any_flops(model_config("ststnet"))
    assert count_parameters(stst) == 5251 + 1651
    _runs_alike_in_onnxruntime(stst, tmp_path)
    with pytest.raises(UserError, match="ensemble_with"):
        model_config("ststnet", changes={"ensemble_with": "mmt_small"})


def test_an_ensembles_partner_can_train_at_a_learning_rate_of_its_own():
    """With partner_lr set the partner's weights move as far as that rate takes them while the lead's move
    exactly as without it (the members' losses are disjoint); a model without a partner refuses the setting."""
    from edge_mer.model.build import build_model
    from edge_mer.train.loop import train_model

    cfg = model_config("mmt_test", ablation="motion-only", changes={"ensemble_with": "ststnet_regions"})
    rng = np.random.default_rng(1)
    labels = np.arange(12) % 3
    motion = (rng.normal(0, 0.05, (12, 3, 112, 112)) + labels[:, None, None, None] * 0.2).astype(np.float32)
    texture = np.zeros((12, 1, 112, 112), np.float32)
    torch.manual_seed(0)
    start = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}  # train_model seeds the same init

    def moved(tcfg: TrainConfig) -> tuple[float, float, bool]:
        state = train_model(cfg, tcfg, motion, texture, labels, seed=0).state_dict()
        dist = {who: sum(float((state[k] - start[k]).abs().sum()) for k in state if k.startswith(who))
                for who in ("lead.", "partner.")}
        return dist["lead."], dist["partner."], all(torch.equal(state[k], lead[k]) for k in lead)

    base = TrainConfig(epochs=2, batch_size=4, lr=1e-3)
    lead = {k: v for k, v in train_model(cfg, base, motion, texture, labels, seed=0).state_dict().items()
            if k.startswith("lead.")}
    lead_same, partner_same, _ = moved(base)
    lead_fast, partner_fast, lead_unchanged = moved(replace(base, partner_lr=1e-2))
    assert lead_unchanged and lead_fast == lead_same
    assert partner_fast > 3 * partner_same
    with pytest.raises(UserError, match="partner_lr"):
        train_model(model_config("ststnet"), replace(base, partner_lr=1e-2), motion, texture, labels, seed=0)


def test_a_mirror_averaged_model_gives_a_face_and_its_mirror_image_one_answer(tmp_path):
    from edge_mer.model.build import build_model
    from edge_mer.model.build import flops_per_sample as any_flops
    from edge_mer.model.ensemble import MirrorAverage

    cfg = model_config("mmt_test", changes={"mirror_average": True, "ensemble_with": "ststnet"})
    assert MMTConfig.from_dict(cfg.to_dict()) == cfg
    model = build_model(cfg).eval()
    assert isinstance(model, MirrorAverage) and model.cfg == cfg and not model.model.cfg.mirror_average
    assert any_flops(cfg) == 2 * any_flops(model_config("mmt_test", changes={"ensemble_with": "ststnet"}))
    m, t = _inputs()
    mirror_m, mirror_t = m.flip(-1), t.flip(-1)
    mirror_m[:, 0] = -mirror_m[:, 0]  # a face moving left, mirrored, moves right
    with torch.no_grad():
        alone, alone_mirrored = model.model(m, t).softmax(-1), model.model(mirror_m, mirror_t).softmax(-1)
        probs, probs_mirrored = model(m, t).softmax(-1), model(mirror_m, mirror_t).softmax(-1)
    assert (alone - alone_mirrored).abs().max() > 1e-3  # the model alone answers the two differently
    assert torch.allclose(probs, probs_mirrored, atol=1e-6)
    both = (alone * alone_mirrored).sqrt()
    assert torch.allclose(probs, both / both.sum(-1, keepdim=True), atol=1e-5)
    # it is trained as the model alone, and exports and runs in ONNX Runtime as one graph, at any batch
    assert torch.equal(model.forward_train(m, t)[0], model.model.forward_train(m, t)[0])
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(_export(model, m[:2], t[:2], tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        got = sess.run(["logits"], {"motion": m[:b].numpy(), "texture": t[:b].numpy()})[0]
        assert abs(got - model(m[:b], t[:b]).detach().numpy()).max() < 1e-4
