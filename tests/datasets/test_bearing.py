"""The simulated vibration signals: deterministic, exact SNR, energy at the fault frequencies of the
physics they claim, and a task that gets harder as the noise grows."""

import math

import numpy as np
import pytest
import torch

from adaptact.datasets import bearing as B
from adaptact.datasets import builtin as D

SHAFT = 25.0  # Hz, one of B.SPEEDS_HZ


def _envelope_spectrum(x: np.ndarray, band: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and magnitudes of the squared envelope of ``x`` band-passed to ``band`` (Hz):
    the standard bearing diagnostic (Randall & Antoni 2011, Sec. 3)."""
    spectrum = np.fft.fft(x)
    f = np.fft.fftfreq(len(x), 1 / B.FS)
    spectrum[(f < band[0]) | (f > band[1])] = 0  # one-sided band: the analytic signal of the band
    envelope = np.abs(np.fft.ifft(2 * spectrum)) ** 2
    magnitude = np.abs(np.fft.rfft(envelope - envelope.mean()))
    return np.fft.rfftfreq(len(x), 1 / B.FS), magnitude


def _peak_ratio(freqs: np.ndarray, magnitude: np.ndarray, target: float) -> float:
    """Magnitude at ``target`` (best of the nearest 3 bins) over the median of 10..1000 Hz."""
    i = int(np.argmin(np.abs(freqs - target)))
    floor = np.median(magnitude[(freqs > 10) & (freqs < 1000)])
    return float(magnitude[i - 1 : i + 2].max() / floor)


def _mean_envelope(label: int, band: tuple[float, float], n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    spectra = [_envelope_spectrum(B.simulate(label, np.random.default_rng([9, label, i]), shaft_hz=SHAFT,
                                             load=1.0), band) for i in range(n)]
    return spectra[0][0], np.mean([m for _, m in spectra], axis=0)


def test_fault_frequencies_of_the_6205():
    f = B.BearingGeometry().frequencies(SHAFT)
    # the Case Western Reserve rig's published multiples of the shaft speed for its SKF 6205
    assert f["bpfo"] / SHAFT == pytest.approx(3.5848, abs=1e-3)
    assert f["bpfi"] / SHAFT == pytest.approx(5.4152, abs=1e-3)
    assert f["bsf"] / SHAFT == pytest.approx(2.357, abs=1e-3)
    assert f["ftf"] / SHAFT == pytest.approx(0.3983, abs=1e-3)


def test_the_generator_is_deterministic_per_seed():
    a, b = B.make_dataset(3.0, 4, seed=5), B.make_dataset(3.0, 4, seed=5)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    c = B.make_dataset(3.0, 4, seed=6)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (8 * 3, 1, B.LENGTH) and a.test_x.shape == (8, 1, B.LENGTH)
    assert a.train_x.dtype == torch.float32 and a.num_classes == len(B.CLASSES) == 8
    assert sorted(a.train_y.tolist()) == sorted(list(range(8)) * 3)


@pytest.mark.parametrize("snr", [5.0, 3.0, 1.0, -2.5])
def test_the_measured_snr_is_the_requested_one(snr):
    clean, noisy = B.make_dataset(None, 3, seed=1), B.make_dataset(snr, 3, seed=1)
    assert torch.equal(clean.train_y, noisy.train_y)
    for x, y in zip(clean.train_x[:, 0], noisy.train_x[:, 0]):
        assert abs(B.measured_snr(x, y) - snr) < 0.1  # float32 storage: in fact within 1e-5 dB
        assert abs(B.measured_snr(x, y) - snr) < 1e-4


def test_noise_is_white_and_gaussian():
    clean, noisy = B.make_dataset(None, 2, seed=2), B.make_dataset(0.0, 2, seed=2)
    noise = (noisy.train_x - clean.train_x)[:, 0].double().numpy()
    noise /= noise.std(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(noise, axis=1)) ** 2
    bands = power[:, 1:].reshape(len(noise), 8, -1).mean(axis=(0, 2))
    assert bands.max() / bands.min() < 1.3  # flat from 0 to fs/2
    assert abs(float(np.mean(noise**4)) - 3) < 0.2  # Gaussian kurtosis


@pytest.mark.parametrize("name, rate", [("outer_race_severe", "bpfo"), ("inner_race_severe", "bpfi"),
                                        ("ball_severe", "2bsf")])
def test_bearing_faults_show_at_their_characteristic_frequency(name, rate):
    f = B.BearingGeometry().frequencies(SHAFT)
    target = 2 * f["bsf"] if rate == "2bsf" else f[rate]
    band = (2_400.0, 4_000.0)  # around the bearing resonance the impacts excite
    freqs, faulty = _mean_envelope(B.CLASSES.index(name), band)
    _, healthy = _mean_envelope(B.CLASSES.index("healthy"), band)
    assert _peak_ratio(freqs, faulty, target) > 10
    assert _peak_ratio(freqs, healthy, target) < 3
    others = {"bpfo": f["bpfo"], "bpfi": f["bpfi"], "2bsf": 2 * f["bsf"]}
    for other, frequency in others.items():  # and not at the other faults' frequencies
        if other != rate:
            assert _peak_ratio(freqs, faulty, frequency) < _peak_ratio(freqs, faulty, target) / 3


def test_inner_race_and_ball_impacts_are_modulated_by_shaft_and_cage():
    f = B.BearingGeometry().frequencies(SHAFT)
    band = (2_400.0, 4_000.0)
    freqs, inner = _mean_envelope(B.CLASSES.index("inner_race_severe"), band)
    assert _peak_ratio(freqs, inner, f["bpfi"] - SHAFT) > 4 and _peak_ratio(freqs, inner, SHAFT) > 4
    freqs, outer = _mean_envelope(B.CLASSES.index("outer_race_severe"), band)
    assert _peak_ratio(freqs, outer, f["bpfo"] - SHAFT) < 3  # outer race: no load-zone modulation
    freqs, ball = _mean_envelope(B.CLASSES.index("ball_severe"), band)
    assert _peak_ratio(freqs, ball, f["ftf"] * 2) > 3 or _peak_ratio(freqs, ball, f["ftf"]) > 3


def test_gear_mesh_and_chipped_tooth():
    x = B.simulate(B.CLASSES.index("healthy"), np.random.default_rng(0), shaft_hz=SHAFT, load=1.0)
    freqs = np.fft.rfftfreq(len(x), 1 / B.FS)
    spectrum = np.abs(np.fft.rfft(x))
    mesh = B.PINION_TEETH * SHAFT
    for h in (1, 2, 3):
        assert _peak_ratio(freqs, spectrum, h * mesh) > 50
    freqs, chipped = _mean_envelope(B.CLASSES.index("chipped_tooth"), (1_200.0, 2_000.0))
    _, healthy = _mean_envelope(B.CLASSES.index("healthy"), (1_200.0, 2_000.0))
    for h in (1, 2, 3):  # one impact per revolution: shaft harmonics in the gear resonance's envelope
        assert _peak_ratio(freqs, chipped, h * SHAFT) > 10
    i = int(np.argmin(np.abs(freqs - SHAFT)))
    assert chipped[i] > 5 * healthy[i]  # the healthy mesh's run-out modulates it far less


def test_severe_faults_carry_more_impact_energy_than_mild_ones():
    band = (2_400.0, 4_000.0)
    for kind in ("outer_race", "inner_race", "ball"):
        energy = {}
        for severity in ("mild", "severe"):
            label = B.CLASSES.index(f"{kind}_{severity}")
            xs = [B.simulate(label, np.random.default_rng([4, label, i]), shaft_hz=SHAFT, load=1.0)
                  for i in range(4)]
            energy[severity] = np.mean([_envelope_spectrum(x, band)[1].sum() for x in xs])
        assert energy["severe"] > 3 * energy["mild"]


def _fft_features(x: torch.Tensor) -> np.ndarray:
    """Log band energies of the spectrum and the low envelope spectrum: a simple, classic feature set."""
    x = x[:, 0].double().numpy()
    spectrum = np.abs(np.fft.rfft(x, axis=1))[:, 1:].reshape(len(x), 64, -1).mean(axis=2)
    envelope = np.abs(np.fft.rfft(np.abs(x - x.mean(axis=1, keepdims=True)), axis=1))[:, 1:129]
    return np.log(np.concatenate([spectrum, envelope], axis=1) + 1e-9)


def test_a_simple_classifier_on_fft_features_degrades_as_the_snr_falls():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    accuracy = {}
    for snr in (None, 5.0, 1.0):
        ds = B.make_dataset(snr, 40, seed=0)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        clf.fit(_fft_features(ds.train_x), ds.train_y.numpy())
        accuracy[snr] = clf.score(_fft_features(ds.test_x), ds.test_y.numpy())
    chance = 1 / len(B.CLASSES)
    assert accuracy[None] > 0.8 > 6 * chance
    assert accuracy[None] > accuracy[5.0] + 0.1 and accuracy[5.0] > accuracy[1.0]
    assert accuracy[1.0] > 2 * chance  # hard, not hopeless


def test_builtin_names_and_fingerprints():
    assert D.builtin("bearing") and D.builtin("bearing-snr5") and D.builtin("bearing-snr-2.5")
    assert not D.builtin("bearing-snrX") and not D.builtin("bearing-snrnan") and not D.builtin("bearings")
    assert D.fingerprint("bearing-snr5") == f"bearing-snr5@sim{B.SIMULATION}"
    assert D.fingerprint("mnist") == "mnist"
    ds = D.load(D.fingerprint("bearing-snr3"))
    assert ds.train_x.shape == (8 * 80, 1, B.LENGTH) and ds.test_x.shape == (8 * 20, 1, B.LENGTH)
    assert ds.name == "bearing-snr3"


def test_make_dataset_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="n_per_class"):
        B.make_dataset(None, 1)
    with pytest.raises(ValueError, match="snr_db"):
        B.make_dataset(math.nan, 4)
