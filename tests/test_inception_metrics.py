"""Inception Score and FID (attngan/metrics/inception_metrics.py): the two formulas against
independent computations, the network loaded from files in the real formats (random weights
under torchvision's key names, with 1000 or 1008 classes), statistics files in pytorch-fid's
format, every file error, and the scores in `evaluate_generator` and `attngan evaluate`."""

import json

import numpy as np
import pytest
import torch
from test_gan_training import single_thread, train_tiny_gan  # noqa: F401 (autouse)

from attngan.cli import main as cli_main
from attngan.config import ConfigError
from attngan.files import OutputError, file_sha256
from attngan.metrics.evaluate import evaluate_generator
from attngan.metrics.inception_metrics import (
    FEATURES,
    FeatureMoments,
    GeneratedImageScores,
    frechet_distance,
    inception_score,
    load_inception_network,
    load_statistics,
    save_statistics,
)
from attngan.nn.inception import InceptionClassifier, _pool_branch_input

# ---------------------------------------------------------------- Inception Score


def _score_by_definition(p: np.ndarray, splits: int) -> tuple[float, float]:
    """The original code's loop, in numpy."""
    scores = []
    for k in range(splits):
        part = p[k * len(p) // splits : (k + 1) * len(p) // splits]
        kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_matches_its_definition():
    p = np.random.default_rng(0).dirichlet(np.full(7, 0.3), size=23)  # 23: unequal splits
    result = inception_score(torch.from_numpy(p), splits=4)
    mean, std = _score_by_definition(p, 4)
    assert result["mean"] == pytest.approx(mean, rel=1e-12)
    assert result["std"] == pytest.approx(std, rel=1e-9)
    assert result["splits"] == 4 and result["images"] == 23 and std > 0


def test_inception_score_limits():
    uniform = torch.full((20, 5), 0.2)
    assert inception_score(uniform, splits=2)["mean"] == pytest.approx(1.0)
    confident = torch.eye(5).repeat(4, 1)  # each class equally often, one-hot
    result = inception_score(confident, splits=2)  # zeros: 0 log 0 = 0
    assert result["mean"] == pytest.approx(5.0) and result["std"] == pytest.approx(0.0)


def test_inception_score_needs_enough_images():
    with pytest.raises(ValueError, match="over 10 splits needs at least 10 images, got 9"):
        inception_score(torch.full((9, 3), 1 / 3), splits=10)
    with pytest.raises(ValueError, match="at least 1 split, got 0"):
        inception_score(torch.full((9, 3), 1 / 3), splits=0)
    with pytest.raises(ValueError, match=r"\[images, classes\]"):
        inception_score(torch.ones(3), splits=1)


# ---------------------------------------------------------------- FID


def _fid_by_complex_sqrtm(mu1, s1, mu2, s2) -> float:
    """tr((S1 S2)^(1/2)) from the eigenvalues of the (non-symmetric) product, in complex."""
    eigenvalues = np.linalg.eigvals(s1 @ s2).astype(complex)
    return float(
        np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eigenvalues).real.sum()
    )


def _random_covariance(rng, dim, rank):
    x = rng.standard_normal((dim, rank))
    return x @ x.T / rank


def test_frechet_distance_matches_the_product_square_root():
    rng = np.random.default_rng(1)
    for rank in (6, 3):  # full rank, then singular
        mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
        s1, s2 = _random_covariance(rng, 6, rank), _random_covariance(rng, 6, 6)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
            _fid_by_complex_sqrtm(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9
        )


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(2)
    mu, sigma = rng.standard_normal(5), _random_covariance(rng, 5, 8)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])  # commuting: per axis
    shift = np.array([3.0, 0.0, -1.0])
    expected = np.sum(shift**2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(3), np.diag(a), shift, np.diag(b)) == pytest.approx(expected)
    rotation = np.linalg.qr(rng.standard_normal((5, 5)))[0]  # invariant under rotation
    s2 = _random_covariance(rng, 5, 8)
    assert frechet_distance(
        rotation @ mu, rotation @ sigma @ rotation.T, np.zeros(5), rotation @ s2 @ rotation.T
    ) == pytest.approx(frechet_distance(mu, sigma, np.zeros(5), s2), rel=1e-9)
    with pytest.raises(ValueError, match="disagree in shape"):
        frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])


def test_feature_moments_are_the_mean_and_unbiased_covariance():
    x = torch.randn(37, 6, dtype=torch.float64) * 3 + 10  # a large mean, as pool3 features
    moments = FeatureMoments(6)
    for part in x.split(10):
        moments.add(part)
    mu, sigma = moments.statistics()
    assert torch.allclose(mu, x.mean(0)) and torch.allclose(sigma, torch.cov(x.T), atol=1e-10)
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        lone = FeatureMoments(6)
        lone.add(x[:1])
        lone.statistics()


# ---------------------------------------------------------------- network files


def _classifier_file(path, classes, extra=True, seed=0):
    torch.manual_seed(seed)
    model = InceptionClassifier(classes).eval()
    with torch.no_grad():
        model.fc.bias.normal_()  # a bias that changes the logits
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if extra:  # as in torchvision's file
        state["AuxLogits.fc.weight"] = torch.randn(classes, 768)
    torch.save(state, path)
    return model


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception_v3_google-test.pth"
    return path, _classifier_file(path, 1000)


def test_torchvision_network_round_trip(torchvision_file):
    path, model = torchvision_file
    network = load_inception_network(path, "torchvision")
    images = torch.rand(2, 3, 40, 40) * 2 - 1  # resized to 299 inside
    features, probs = network.outputs(images)
    resized = torch.nn.functional.interpolate(
        images, size=(299, 299), mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        expected_features, logits = model(resized)
    assert features.dtype == torch.float64 and features.shape == (2, 2048)
    assert torch.allclose(features, expected_features.double())
    assert torch.allclose(probs, torch.softmax(logits.double(), 1), atol=1e-12)
    assert torch.allclose(probs.sum(1), torch.ones(2, dtype=torch.float64))
    protocol = network.protocol
    assert protocol["variant"] == "torchvision" and protocol["classes"] == 1000
    assert protocol["weights_sha256"] == file_sha256(path) and protocol["input_size"] == 299


def test_pytorch_fid_network_pools_and_unbiased_logits(tmp_path, torchvision_file):
    path = tmp_path / "pt_inception-test.pth"
    model = _classifier_file(path, 1008, extra=False)
    fid_network = load_inception_network(path, "pytorch-fid")
    plain = InceptionClassifier(1008).eval()  # same weights, other pools
    plain.load_state_dict(fid_network.model.state_dict())
    images = torch.rand(2, 3, 299, 299) * 2 - 1
    features, probs = fid_network.outputs(images)
    with torch.no_grad():
        plain_features = plain(images)[0].double()
    assert not torch.allclose(features, plain_features)  # TensorFlow's pools differ
    unbiased = features @ model.fc.weight.double().T  # no bias, as the IS code
    assert torch.allclose(probs, torch.softmax(unbiased, 1), atol=1e-9)
    assert fid_network.protocol["classes"] == 1008
    assert fid_network.protocol["inception_score_logits"] == "without the classifier's bias"


def test_a_file_of_the_other_variant_is_refused(tmp_path, torchvision_file):
    """The pools and the score depend on the variant, and its class count tells the files apart:
    pytorch-fid's weights read as torchvision's (or the reverse) would give other numbers."""
    fid_file = tmp_path / "pt_inception-test.pth"
    _classifier_file(fid_file, 1008, extra=False)
    with pytest.raises(
        ConfigError,
        match=r"has 1008 classes, but the torchvision network has "
        r"1000: pass --inception-variant pytorch-fid",
    ):
        load_inception_network(fid_file, "torchvision")
    with pytest.raises(
        ConfigError,
        match=r"has 1000 classes, .* pass --inception-variant "
        r"torchvision for this file",
    ):
        load_inception_network(torchvision_file[0], "pytorch-fid")
    other = tmp_path / "ten.pth"
    _classifier_file(other, 10, extra=False)
    with pytest.raises(
        ConfigError,
        match=r"has 10 classes, .* pass torchvision's or "
        r"pytorch-fid's file",
    ):
        load_inception_network(other, "torchvision")


def test_tf_pools_leave_the_padding_out_and_max_pool_mixed_7c():
    tf, plain = InceptionClassifier(10, tf_pools=True), InceptionClassifier(10)
    assert tf.Mixed_5b.pool == tf.Mixed_6e.pool == tf.Mixed_7b.pool == "avg_tf"
    assert tf.Mixed_7c.pool == "max" and plain.Mixed_7c.pool == plain.Mixed_5b.pool == "avg"
    x = torch.ones(1, 192, 5, 5)  # a constant map keeps its value at the border only when the
    # pool leaves the padding out
    assert torch.equal(_pool_branch_input(x, "avg_tf"), x)
    assert _pool_branch_input(x, "avg")[0, 0, 0, 0] == pytest.approx(4 / 9)


@pytest.mark.gpu
def test_inception_network_on_cuda_matches_cpu(torchvision_file):
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    on_cpu = load_inception_network(torchvision_file[0], "torchvision", "cpu").outputs(images)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # IEEE convolutions
        on_gpu = load_inception_network(torchvision_file[0], "torchvision", "cuda").outputs(
            images.cuda()
        )
    for cpu, gpu in zip(on_cpu, on_gpu):
        assert gpu.device.type == "cpu" and gpu.dtype == torch.float64  # returned on the CPU
        assert torch.allclose(gpu, cpu, rtol=1e-3, atol=1e-5)


def test_network_file_errors(tmp_path, torchvision_file):
    with pytest.raises(ConfigError, match=r"does not exist.*inception_v3_google.*pt_inception"):
        load_inception_network(tmp_path / "none.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a pytorch file" * 20)
    with pytest.raises(ConfigError, match="could not be read as a PyTorch file"):
        load_inception_network(corrupt)
    trunk_only = tmp_path / "trunk.pth"
    state = torch.load(torchvision_file[0], weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, trunk_only)
    with pytest.raises(ConfigError, match=r"has no classifier \(fc.weight"):
        load_inception_network(trunk_only)
    with pytest.raises(ConfigError, match="unknown Inception variant 'tf'.*pytorch-fid"):
        load_inception_network(torchvision_file[0], "tf")
    with pytest.raises(ValueError, match=r"RGB images \[B, 3, H, W\]"):
        load_inception_network(torchvision_file[0]).outputs(torch.zeros(1, 1, 80, 80))


# ---------------------------------------------------------------- statistics files


def test_statistics_files(tmp_path, torchvision_file):
    network = load_inception_network(torchvision_file[0])
    mu = torch.randn(FEATURES, dtype=torch.float64)
    sigma = torch.eye(FEATURES, dtype=torch.float64)
    ours = tmp_path / "ours.npz"
    save_statistics(ours, mu, sigma, network, resolution=64, images=12)
    got_mu, got_sigma, recorded = load_statistics(ours, network, 64)
    assert torch.equal(got_mu, mu) and torch.equal(got_sigma, sigma)
    assert recorded == dict(
        variant="torchvision",
        weights_sha256=file_sha256(torchvision_file[0]),
        resolution=64,
        images=12,
    )
    with pytest.raises(FileExistsError, match="never written over"):
        save_statistics(ours, mu, sigma, network, resolution=64, images=12)
    with pytest.raises(ConfigError, match="of 64 px images, but the generator makes 32 px"):
        load_statistics(ours, network, 32)
    other = tmp_path / "other.pth"
    _classifier_file(other, 1000, seed=5)
    with pytest.raises(ConfigError, match="computed with the torchvision Inception of sha256"):
        load_statistics(ours, load_inception_network(other), 64)

    theirs = tmp_path / "pytorch_fid.npz"  # pytorch-fid's --save-stats
    np.savez(theirs, mu=mu.numpy().astype(np.float32), sigma=sigma.numpy())
    assert load_statistics(theirs, network, 64)[2] == {}

    def fails(content, match, name="bad.npz"):
        path = tmp_path / name
        np.savez(path, **content)
        with pytest.raises(ConfigError, match=match):
            load_statistics(path)

    fails(dict(mu=mu.numpy()), "lacks sigma", "a.npz")
    fails(dict(mu=mu.numpy(), sigma=np.eye(3)), r"expected float mu \[d\]", "b.npz")
    fails(
        dict(mu=np.zeros(10), sigma=np.eye(10)),
        "holds statistics of 10 features, but FID compares Inception's 2048 pool features",
        "c.npz",
    )
    fails(dict(mu=np.full(2048, np.nan), sigma=np.eye(2048)), "NaN or infinite", "d.npz")
    with pytest.raises(ConfigError, match="does not exist"):
        load_statistics(tmp_path / "none.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK not a zip")
    with pytest.raises(ConfigError, match="could not be read as an .npz"):
        load_statistics(garbage)


# ---------------------------------------------------------------- evaluation


def test_generated_image_scores_take_one_resolution(torchvision_file):
    scores = GeneratedImageScores(
        torchvision_file[0], "torchvision", "cpu", splits=2, count=4, resolution=32
    )
    scores.add(torch.rand(2, 3, 32, 32) * 2 - 1)
    with pytest.raises(ValueError, match="makes 16 px images but the test images are 32 px"):
        scores.add(torch.rand(2, 3, 16, 16) * 2 - 1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_gan(tmp_path_factory.mktemp("evaluate_inception"))


def test_evaluation_with_inception_scores(run, torchvision_file, tmp_path):
    gan, _ = run
    weights = torchvision_file[0]
    stats = tmp_path / "stats" / "test_32px.npz"
    result = evaluate_generator(
        gan, samples=12, seed=1, inception_weights=weights, fid_stats=stats, inception_splits=3
    )
    score = result["inception_score"]
    assert score["splits"] == 3 and score["images"] == 12 and score["mean"] >= 1.0
    assert result["fid"] > 0
    protocol = result["protocol"]["inception"]
    assert protocol["weights_sha256"] == file_sha256(weights)
    assert protocol["inception_score_splits"] == 3
    real = protocol["fid_real_statistics"]
    assert real["computed_from"] == "12 test images (centre crop, 32 px)"
    assert real["saved_to"] == str(stats) and stats.is_file()
    again = evaluate_generator(
        gan, samples=12, seed=1, inception_weights=weights, fid_stats=stats, inception_splits=3
    )  # reads the saved file
    assert again["fid"] == pytest.approx(result["fid"], rel=1e-9)
    assert again["inception_score"] == result["inception_score"]
    assert again["protocol"]["inception"]["fid_real_statistics"]["file"] == str(stats)
    assert again["protocol"]["inception"]["fid_real_statistics"]["sha256"] == file_sha256(stats)
    assert json.loads(json.dumps(result)) == result  # JSON as it is

    plain = evaluate_generator(gan, samples=12, seed=1)
    assert plain["inception_score"] is None and plain["fid"] is None
    assert plain["r_precision"] == result["r_precision"]  # nothing else changes


def test_evaluation_checks_inception_inputs_before_generating(
    run, torchvision_file, tmp_path, capsys, unwritable_folder
):
    gan, _ = run
    with pytest.raises(
        ValueError,
        match=r"fid_stats \(--fid-stats\) configure .* pass "
        r"inception_weights \(--inception-weights\)",
    ):
        evaluate_generator(gan, samples=4, fid_stats=tmp_path / "s.npz")
    with pytest.raises(
        ValueError,
        match=r"^inception_variant \(--inception-variant\), "
        r"inception_splits \(--inception-splits\) configure",
    ):
        evaluate_generator(gan, samples=4, inception_variant="pytorch-fid", inception_splits=2)
    assert (
        cli_main(["evaluate", "--ckpt", str(gan), "--samples", "4", "--inception-splits", "2"]) == 2
    )
    assert "--inception-splits) configure" in capsys.readouterr().err
    with pytest.raises(ValueError, match="over 10 splits needs at least 10 images, got 4"):
        evaluate_generator(gan, samples=4, inception_weights=torchvision_file[0])
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate_generator(gan, samples=4, inception_weights=tmp_path / "none.pth")
    with pytest.raises(
        OutputError,
        match=f"cannot write {unwritable_folder} .*; make it "
        "writable or pass another --fid-stats path",
    ):
        evaluate_generator(
            gan,
            samples=4,
            inception_weights=torchvision_file[0],
            inception_splits=2,
            fid_stats=unwritable_folder / "s.npz",
        )


def test_cli_evaluate_with_inception(run, torchvision_file, tmp_path, capsys):
    gan, _ = run
    out = tmp_path / "eval.json"
    assert (
        cli_main(
            [
                "evaluate",
                "--ckpt",
                str(gan),
                "--samples",
                "6",
                "--out",
                str(out),
                "--inception-weights",
                str(torchvision_file[0]),
                "--inception-splits",
                "2",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["inception_score"]["splits"] == 2 and result["fid"] > 0
    capsys.readouterr()
    assert (
        cli_main(
            [
                "evaluate",
                "--ckpt",
                str(gan),
                "--samples",
                "6",
                "--inception-weights",
                str(torchvision_file[0]),
                "--inception-variant",
                "tf",
            ]
        )
        == 2
    )
    assert "unknown Inception variant 'tf'" in capsys.readouterr().err
