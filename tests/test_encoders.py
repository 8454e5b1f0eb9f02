"""DAMSM encoders (docs/DESIGN.md): text encoder masking and order, image encoder shapes,
the frozen Inception trunk, and loading torchvision-named Inception weights with clear errors.

Inception at 299 is slow on a CPU: it runs once at batch 1; other Inception tests use a smaller
input (the trunk works from 75 x 75 up).
"""

import dataclasses

import pytest
import torch

from attngan.config import ConfigError, ImageEncoderConfig, TextEncoderConfig
from attngan.nn import (
    InceptionEncoder,
    InceptionTrunk,
    SmallImageEncoder,
    TextEncoder,
    build_image_encoder,
    load_inception_weights,
)

VOCAB = 23
D = 16


def _text_encoder(rnn="lstm", dropout=0.5):
    config = TextEncoderConfig(embedding_dim=12, hidden_dim=D, rnn=rnn, dropout=dropout)
    return TextEncoder(VOCAB, config).eval()


def _captions(lengths, max_len):
    lengths = torch.tensor(lengths)
    captions = torch.randint(1, VOCAB, (len(lengths), max_len))
    captions[torch.arange(max_len)[None, :] >= lengths[:, None]] = 0
    return captions, lengths


# ---------------------------------------------------------------- text encoder


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_text_encoder_shapes_and_zero_padding(rnn):
    encoder = _text_encoder(rnn)
    captions, lengths = _captions([3, 7, 1, 5, 2], max_len=9)  # L wider than the longest
    words, sentence = encoder(captions, lengths)
    assert words.shape == (5, D, 9) and sentence.shape == (5, D)
    assert words.dtype == sentence.dtype == torch.float32
    valid = torch.arange(9)[None, :] < lengths[:, None]  # [B, L]
    assert torch.equal(words.transpose(1, 2)[~valid], torch.zeros((~valid).sum(), D))
    assert (words.transpose(1, 2)[valid].abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_text_encoder_ignores_padding_content(rnn):
    encoder = _text_encoder(rnn)
    captions, lengths = _captions([4, 6, 2], max_len=6)
    words, sentence = encoder(captions, lengths)
    garbage = captions.clone()
    pad = torch.arange(6)[None, :] >= lengths[:, None]
    garbage[pad] = torch.randint(-5, VOCAB + 5, (int(pad.sum()),))  # even invalid ids
    words2, sentence2 = encoder(garbage, lengths)
    assert torch.equal(words, words2) and torch.equal(sentence, sentence2)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_text_encoder_keeps_batch_order_and_joins_forward_then_backward(rnn):
    encoder = _text_encoder(rnn)
    lengths_list = [2, 6, 1, 6, 4, 3]  # unsorted, with ties
    captions, lengths = _captions(lengths_list, max_len=6)
    words, sentence = encoder(captions, lengths)
    half = D // 2
    for b, n in enumerate(lengths_list):
        alone_words, alone_sentence = encoder(captions[b : b + 1, :n], lengths[b : b + 1])
        torch.testing.assert_close(words[b : b + 1, :, :n], alone_words, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sentence[b : b + 1], alone_sentence, rtol=1e-5, atol=1e-6)
        # Sentence = [forward state after the last word, backward state after the first].
        torch.testing.assert_close(sentence[b, :half], words[b, :half, n - 1])
        torch.testing.assert_close(sentence[b, half:], words[b, half:, 0])


def test_text_encoder_accepts_int32_ids_and_lengths():
    encoder = _text_encoder()
    captions, lengths = _captions([3, 1], max_len=4)
    words, sentence = encoder(captions.int(), lengths.int())
    words_ref, sentence_ref = encoder(captions, lengths)
    assert torch.equal(words, words_ref) and torch.equal(sentence, sentence_ref)


def test_text_encoder_dropout_only_in_train_mode():
    encoder = _text_encoder(dropout=0.5)
    captions, lengths = _captions([5, 3], max_len=5)
    first, _ = encoder(captions, lengths)
    assert torch.equal(first, encoder(captions, lengths)[0])
    encoder.train()
    assert not torch.equal(encoder(captions, lengths)[0], encoder(captions, lengths)[0])


def test_text_encoder_embedding_init_and_gradients():
    encoder = _text_encoder().train()
    weight = encoder.encoder.weight
    assert weight.abs().max() <= 0.1 and weight.std() > 0.03  # U(-0.1, 0.1): std 0.058
    captions, lengths = _captions([3, 5], max_len=5)
    words, sentence = encoder(captions, lengths)
    (words.square().sum() + sentence.square().sum()).backward()
    used = torch.unique(captions[torch.arange(5)[None, :] < lengths[:, None]])
    assert (weight.grad[used].abs().sum(dim=1) > 0).all()
    assert weight.grad[0].abs().sum() == 0  # id 0 only in padded slots: they get no gradient


@pytest.mark.parametrize(
    "lengths, match",
    [
        ([0, 3], r"caption 0 has length 0, outside \[1, 4\]"),
        ([3, 5], r"caption 1 has length 5, outside \[1, 4\]"),
        ([3], r"lengths must be an integer tensor \[B\] with B=2"),
        ([3.0, 2.0], r"lengths must be an integer tensor"),
    ],
)
def test_text_encoder_rejects_bad_lengths(lengths, match):
    encoder = _text_encoder()
    captions = torch.randint(1, VOCAB, (2, 4))
    with pytest.raises(ValueError, match=match):
        encoder(captions, torch.tensor(lengths))


def test_text_encoder_rejects_bad_captions_and_config():
    encoder = _text_encoder()
    with pytest.raises(ValueError, match=f"word id {VOCAB}, outside the vocabulary of {VOCAB}"):
        encoder(torch.tensor([[1, VOCAB]]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"captions must be an integer tensor \[B, L\]"):
        encoder(torch.rand(2, 4), torch.tensor([1, 2]))
    with pytest.raises(
        ValueError,
        match="captions are on meta but the text encoder on cpu; put captions on the CPU$",
    ):
        encoder(torch.ones(2, 4, dtype=torch.long, device="meta"), torch.tensor([1, 2]))
    with pytest.raises(ConfigError, match="text_encoder.rnn must be one of lstm, gru"):
        TextEncoder(VOCAB, TextEncoderConfig(rnn="transformer"))
    with pytest.raises(ConfigError, match="text_encoder.hidden_dim must be an even number"):
        TextEncoder(VOCAB, TextEncoderConfig(hidden_dim=15))


# ---------------------------------------------------------------- small image encoder


def _small(input_size=64, width=8):
    return build_image_encoder(
        ImageEncoderConfig(backbone="small", input_size=input_size, width=width), D
    )


@pytest.mark.parametrize("image_size", [64, 32, 128])
def test_small_encoder_shapes_any_input_size(image_size):
    encoder = _small()
    assert isinstance(encoder, SmallImageEncoder)
    regions, code = encoder(torch.rand(3, 3, image_size, image_size) * 2 - 1)
    assert regions.shape == (3, D, 8, 8) and code.shape == (3, D)
    assert regions.std() > 0 and code.std() > 0


def test_small_encoder_trains_everything_and_passes_gradients_to_the_image():
    encoder = _small().train()
    params = encoder.trainable_parameters()
    assert len(params) == len(list(encoder.parameters())) and len(params) > 4
    images = (torch.rand(4, 3, 64, 64) * 2 - 1).requires_grad_()
    regions, code = encoder(images)
    (regions.square().mean() + code.square().mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert images.grad.abs().sum() > 0
    for head in (encoder.emb_features.weight, encoder.emb_cnn_code.weight):
        assert head.abs().max() <= 0.1
    assert encoder.emb_features.bias is None


def test_image_encoder_config_errors():
    with pytest.raises(ConfigError, match="image_encoder.backbone must be 'inception' or 'small'"):
        build_image_encoder(ImageEncoderConfig(backbone="resnet"), D)
    with pytest.raises(ConfigError, match="only read by the inception backbone"):
        build_image_encoder(ImageEncoderConfig(backbone="small", weights="x.pth"), D)
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_image_encoder(ImageEncoderConfig(backbone="small", input_size=40), D)
    with pytest.raises(ValueError, match=r"images must be a float tensor \[B, 3, H, W\]"):
        _small()(torch.rand(2, 1, 64, 64))


# ---------------------------------------------------------------- Inception


@pytest.fixture(scope="module")
def trunk_file(tmp_path_factory):
    """A random trunk saved under torchvision's key names, plus fake classifier keys."""
    torch.manual_seed(1)
    trunk = InceptionTrunk().eval()
    state = trunk.state_dict()
    extra = {
        "AuxLogits.conv0.conv.weight": torch.randn(128, 768, 1, 1),
        "AuxLogits.fc.weight": torch.randn(1000, 768),
        "AuxLogits.fc.bias": torch.zeros(1000),
        "fc.weight": torch.randn(1000, 2048),
        "fc.bias": torch.zeros(1000),
    }
    # Old torchvision files have no BatchNorm batch counters: leave them out.
    file_state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    file_state.update(extra)
    path = tmp_path_factory.mktemp("weights") / "inception_v3_google-test.pth"
    torch.save(file_state, path)
    return path, trunk, file_state, sorted(extra)


def _inception_config(**changes):
    return dataclasses.replace(ImageEncoderConfig(backbone="inception", input_size=107), **changes)


def test_inception_encoder_shapes_at_299():
    encoder = build_image_encoder(
        ImageEncoderConfig(backbone="inception", random_init=True, input_size=299), D
    )
    assert isinstance(encoder, InceptionEncoder)
    with torch.no_grad():
        regions, code = encoder(torch.rand(1, 3, 64, 64) * 2 - 1)  # resized to 299 inside
    assert regions.shape == (1, D, 17, 17) and code.shape == (1, D)
    assert regions.std() > 0 and code.std() > 0


def test_inception_weights_round_trip(trunk_file):
    path, trunk, _, extra_keys = trunk_file
    encoder = build_image_encoder(_inception_config(weights=str(path)), D).eval()
    assert encoder.ignored_weight_keys == extra_keys
    loaded = encoder.trunk.state_dict()
    for key, value in trunk.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], value), key
    images = torch.rand(2, 3, 107, 107) * 2 - 1
    with torch.no_grad():
        expected = trunk(images)
        got = encoder.trunk(images)
    assert expected[0].std() > 0.01 and expected[1].std() > 0.01  # not a degenerate trunk
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    fresh = InceptionTrunk()
    assert load_inception_weights(fresh, path) == extra_keys


def test_inception_trunk_frozen_and_batchnorm_follows_the_mode_as_the_original(trunk_file):
    """Only the heads train; the trunk's BatchNorm uses batch statistics in train mode and moves
    its running statistics (the original's pretrain_DAMSM.py trains with cnn_model.train()), and
    uses the running statistics, unchanged, in eval mode."""
    path = trunk_file[0]
    encoder = build_image_encoder(_inception_config(weights=str(path)), D).train()
    assert all(m.training for m in encoder.trunk.modules())
    assert all(not p.requires_grad for p in encoder.trunk.parameters())
    heads = {
        id(p)
        for p in [
            encoder.emb_features.weight,
            encoder.emb_cnn_code.weight,
            encoder.emb_cnn_code.bias,
        ]
    }
    assert {id(p) for p in encoder.trainable_parameters()} == heads
    assert encoder.emb_features.weight.abs().max() <= 0.1
    assert encoder.emb_cnn_code.weight.abs().max() <= 0.1
    bn = encoder.trunk.Mixed_6e.branch_pool.bn
    running = bn.running_mean.clone()
    images = (torch.rand(2, 3, 107, 107) * 2 - 1).requires_grad_()
    regions, code = encoder(images)
    assert regions.shape == (2, D, 5, 5) and code.shape == (2, D)
    (regions.square().mean() + code.square().mean()).backward()
    moved = bn.running_mean.clone()
    assert not torch.equal(running, moved)  # batch statistics, as trained
    assert all(p.grad is None for p in encoder.trunk.parameters())
    assert all(p.grad is not None for p in encoder.trainable_parameters())
    assert images.grad.abs().sum() > 0  # the GAN's DAMSM loss reaches the generator

    encoder.eval()
    with torch.no_grad():
        eval_regions, _ = encoder(images)
        assert torch.equal(bn.running_mean, moved)  # running statistics, kept
        train_regions, _ = encoder.train()(images)
    assert not torch.allclose(eval_regions, train_regions)


def test_inception_without_weights_says_how_to_fix():
    with pytest.raises(
        ConfigError,
        match=r"image_encoder.weights=PATH.*"
        r"image_encoder.random_init=true",
    ):
        build_image_encoder(_inception_config(), D)


def test_inception_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match=f"{path} does not exist.*image_encoder.weights=PATH"):
        build_image_encoder(_inception_config(weights=str(path)), D)


def test_inception_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"this is not a pytorch file" * 10)
    with pytest.raises(ConfigError, match=f"{path} could not be read.*image_encoder.weights=PATH"):
        load_inception_weights(InceptionTrunk(), path)


def test_inception_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ConfigError, match=f"{path} does not hold a state dict.*holds a list"):
        load_inception_weights(InceptionTrunk(), path)


def test_inception_wrong_shape_and_missing_key(trunk_file, tmp_path):
    _, _, file_state, _ = trunk_file
    wrong = dict(file_state)
    wrong["Conv2d_1a_3x3.conv.weight"] = torch.zeros(32, 3, 5, 5)
    wrong_path = tmp_path / "wrong.pth"
    torch.save(wrong, wrong_path)
    with pytest.raises(
        ConfigError,
        match=rf"{wrong_path} is not an Inception-v3 state dict .*"
        r"1 keys of the wrong shape \(first: "
        r"Conv2d_1a_3x3.conv.weight \(32, 3, 5, 5\) "
        r"\(expected \(32, 3, 3, 3\)\)",
    ):
        load_inception_weights(InceptionTrunk(), wrong_path)
    missing = {k: v for k, v in file_state.items() if k != "Mixed_7c.branch_pool.bn.running_var"}
    missing_path = tmp_path / "missing.pth"
    torch.save(missing, missing_path)
    with pytest.raises(
        ConfigError,
        match=r"1 missing keys \(first: "
        r"Mixed_7c.branch_pool.bn.running_var\)",
    ):
        load_inception_weights(InceptionTrunk(), missing_path)


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_encoders_on_cuda_match_cpu():
    text = _text_encoder()
    captions, lengths = _captions([4, 7, 2], max_len=8)
    words, sentence = text(captions, lengths)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN's RNNs may use TF32
        words_gpu, sentence_gpu = text.cuda()(captions.cuda(), lengths.cuda())  # lengths on GPU
        kept_on_cpu = text(captions, lengths)  # as the training steps pass them
    for on_gpu, from_cpu in zip((words_gpu, sentence_gpu), kept_on_cpu):
        torch.testing.assert_close(from_cpu, on_gpu, rtol=0, atol=0)
    # cuDNN's LSTM sums in another order than the CPU one: on an H100 (2026-11-27, TF32 allowed)
    # 2 of 384 word features differed by 1.2e-5 (1.1e-3 relative, on a small value); a wrong
    # length or mask moves them by orders of magnitude more
    torch.testing.assert_close(words_gpu.cpu(), words, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(sentence_gpu.cpu(), sentence, rtol=1e-3, atol=1e-4)
    assert torch.equal(words_gpu[2, :, 2:].cpu(), torch.zeros(D, 6))
    for encoder in (
        _small().eval(),
        build_image_encoder(_inception_config(random_init=True, input_size=299), D).eval(),
    ):
        images = torch.rand(2, 3, 128, 128) * 2 - 1
        with torch.no_grad():
            regions, code = encoder(images)
        images_gpu = images.cuda().requires_grad_()
        # cuDNN convolutions default to TF32; full fp32 makes the comparison with CPU tight.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            regions_gpu, code_gpu = encoder.cuda()(images_gpu)
        (regions_gpu.square().mean() + code_gpu.square().mean()).backward()
        assert images_gpu.grad.abs().sum() > 0
        torch.testing.assert_close(regions_gpu.detach().cpu(), regions, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(code_gpu.detach().cpu(), code, rtol=1e-3, atol=1e-3)


def test_small_encoder_is_the_same_in_train_and_eval_mode():
    # With BatchNorm it matched captions in train mode and was near chance in eval mode.
    encoder = _small()
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    encoder.train()
    train_out = encoder(images)
    encoder.eval()
    eval_out = encoder(images)
    for a, b in zip(train_out, eval_out):
        torch.testing.assert_close(a, b)
    single = encoder(images[:1])
    torch.testing.assert_close(single[1], eval_out[1][:1])
