"""Simulated rotating-machinery vibration for fault diagnosis (the APReLU paper's task).

The APReLU paper (Zhao et al., IEEE TIE 2020) classifies 8 health states of a planetary gearbox
from 4096-point vibration windows sampled at 12.8 kHz, with white Gaussian noise added at an SNR
of 5, 3 and 1 dB. Its data are private and no package ships real vibration data offline, so this
module generates signals from the standard physical models instead; everything reported from it
says the signals are simulated.

The machine: a shaft turning at ``fr`` Hz (one of ``SPEEDS_HZ``, under one of ``LOADS``) carrying
a pinion of ``PINION_TEETH`` teeth and a deep-groove ball bearing of SKF 6205 geometry (9 balls,
ball diameter 7.94 mm, pitch diameter 39.04 mm, contact angle 0; the bearing of the Case Western
Reserve test rig). Every signal holds the healthy background:

* shaft harmonics 1x, 2x, 3x (residual unbalance and misalignment);
* gear-mesh harmonics at ``PINION_TEETH * fr`` (1x, 2x, 3x), their amplitude growing with the
  load, slightly amplitude-modulated by the shaft (normal run-out).

A fault adds a train of impacts, each exciting a decaying structural resonance
(``h(t) = exp(-zeta 2 pi fn t) sin(2 pi fn sqrt(1 - zeta^2) t)``), with the random slip of
rolling elements as 1.5% timing jitter on every interval (Randall & Antoni 2011, Sec. 2.1):

* outer race: impacts at BPFO = n/2 fr (1 - d/D cos phi), a stationary load zone: no modulation;
* inner race: impacts at BPFI = n/2 fr (1 + d/D cos phi), amplitude-modulated at the shaft
  frequency as the defect passes through the load zone (McFadden & Smith 1984);
* ball: impacts at 2 BSF (the defect strikes both races), BSF = D/(2d) fr (1 - (d/D cos phi)^2),
  amplitude-modulated at the cage frequency FTF = fr/2 (1 - d/D cos phi);
* chipped pinion tooth: one impact per shaft revolution exciting the gear's resonance, and the
  mesh amplitude-modulated once per revolution (Randall 1982).

Bearing faults come at two severities (impact amplitude ``SEVERITY``), the gear fault at one:
8 classes, ``CLASSES``. Impact amplitudes grow with the load. Each signal draws its speed, load
and phases from its own seeded generator, so a signal depends only on (seed, class, index).

Noise: white Gaussian, scaled per signal so that 10 log10(P_signal / P_noise) is exactly the
requested SNR on that signal's own realisation.

References: R. B. Randall, J. Antoni, "Rolling element bearing diagnostics - a tutorial",
MSSP 25 (2011) 485-520; P. D. McFadden, J. D. Smith, "Model for the vibration produced by a single
point defect in a rolling element bearing", JSV 96 (1984) 69-82; R. B. Randall, "A new method of
modeling gear faults", J. Mech. Des. 104 (1982) 259-267.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CLASSES", "FS", "LENGTH", "LOADS", "SPEEDS_HZ", "BearingGeometry", "add_noise", "make_dataset",
           "measured_snr", "simulate"]

SIMULATION = 1  # bump when the signals change: it enters the runs' keys (``data.bearing_fingerprint``)
FS = 12_800  # Hz, the paper's sampling rate
LENGTH = 4096  # samples per window, the paper's
SPEEDS_HZ = (20.0, 25.0, 30.0, 35.0)  # shaft speeds (1200..2100 rpm)
LOADS = (0.5, 1.0, 1.5)  # relative torque
PINION_TEETH = 23
BEARING_RESONANCE = (3_200.0, 0.06)  # Hz, damping ratio: the housing's mode the bearing impacts excite
GEAR_RESONANCE = (1_600.0, 0.08)  # the gear body's mode a chipped tooth excites
JITTER = 0.015  # standard deviation of each impact interval, a share of the period (slip)
SEVERITY = {"mild": 0.8, "severe": 2.0}  # impact amplitude of bearing faults
CHIPPED_TOOTH_AMPLITUDE = 1.5
MAX_SNR_DB = 200  # beyond this the noise is below float32's resolution of the signal, or the other way round
CLASSES = ("healthy", "outer_race_mild", "outer_race_severe", "inner_race_mild", "inner_race_severe",
           "ball_mild", "ball_severe", "chipped_tooth")


@dataclass(frozen=True)
class BearingGeometry:
    """A rolling-element bearing; the defaults are the SKF 6205 (Case Western Reserve rig)."""

    balls: int = 9
    ball_diameter: float = 7.94  # mm
    pitch_diameter: float = 39.04  # mm
    contact_angle: float = 0.0  # rad

    def frequencies(self, shaft_hz: float) -> dict[str, float]:
        """The fault characteristic frequencies (Hz) at shaft speed ``shaft_hz``: BPFO, BPFI, BSF
        (ball spin) and FTF (cage)."""
        r = self.ball_diameter / self.pitch_diameter * math.cos(self.contact_angle)
        return {"bpfo": self.balls / 2 * shaft_hz * (1 - r), "bpfi": self.balls / 2 * shaft_hz * (1 + r),
                "bsf": self.pitch_diameter / (2 * self.ball_diameter) * shaft_hz * (1 - r * r),
                "ftf": shaft_hz / 2 * (1 - r)}


BEARING = BearingGeometry()


def _resonance(fs: float, frequency: float, damping: float) -> np.ndarray:
    """The impulse response of a single-degree-of-freedom mode, until it has decayed to 0.1%."""
    decay = damping * 2 * math.pi * frequency
    t = np.arange(int(math.ceil(math.log(1000) / decay * fs))) / fs
    return np.exp(-decay * t) * np.sin(2 * math.pi * frequency * math.sqrt(1 - damping**2) * t)


def _impacts(rate: float, length: int, fs: float, rng: np.random.Generator, modulation: float = 0.0,
             depth: float = 0.0) -> np.ndarray:
    """A train of unit impacts at ``rate`` Hz with JITTER on every interval, weighted by
    1 - depth (1 - cos(2 pi modulation t + phase)) / 2; as a signal of ``length`` samples."""
    period = 1.0 / rate
    n = int(length / fs * rate) + 3
    times = rng.uniform(0, period) + np.cumsum(period * (1 + JITTER * rng.standard_normal(n))) - period
    times = times[(times >= 0) & (times < length / fs)]
    phase = rng.uniform(0, 2 * math.pi)
    weights = 1 - depth * (1 - np.cos(2 * math.pi * modulation * times + phase)) / 2
    train = np.zeros(length)
    np.add.at(train, np.minimum((times * fs).round().astype(int), length - 1), weights)
    return train


def simulate(label: int, rng: np.random.Generator, length: int = LENGTH, fs: float = FS,
             shaft_hz: float | None = None, load: float | None = None) -> np.ndarray:
    """One clean vibration signal (float64, ``length`` samples) of class ``CLASSES[label]``; the
    shaft speed and load are drawn from SPEEDS_HZ and LOADS unless given."""
    name = CLASSES[label]
    fr = float(rng.choice(SPEEDS_HZ)) if shaft_hz is None else float(shaft_hz)
    load = float(rng.choice(LOADS)) if load is None else float(load)
    t = np.arange(length) / fs
    mesh = PINION_TEETH * fr
    signal = sum(a * np.sin(2 * math.pi * k * fr * t + rng.uniform(0, 2 * math.pi))
                 for k, a in ((1, 0.4), (2, 0.2), (3, 0.1)))
    runout = 0.1
    if name == "chipped_tooth":
        runout = 0.4  # the damaged tooth's weaker mesh once per revolution
    envelope = 1 - runout * (1 - np.cos(2 * math.pi * fr * t + rng.uniform(0, 2 * math.pi))) / 2
    signal = signal + envelope * sum(0.5 * load / h * np.sin(2 * math.pi * h * mesh * t +
                                                             rng.uniform(0, 2 * math.pi)) for h in (1, 2, 3))
    strength = 0.7 + 0.3 * load  # impacts grow with the load
    if name == "healthy":
        return signal
    if name == "chipped_tooth":
        train = CHIPPED_TOOTH_AMPLITUDE * strength * _impacts(fr, length, fs, rng)
        return signal + np.convolve(train, _resonance(fs, *GEAR_RESONANCE))[:length]
    kind, severity = name.rsplit("_", 1)
    f = BEARING.frequencies(fr)
    rate, modulation, depth = {"outer_race": (f["bpfo"], 0.0, 0.0), "inner_race": (f["bpfi"], fr, 0.8),
                               "ball": (2 * f["bsf"], f["ftf"], 0.8)}[kind]
    train = SEVERITY[severity] * strength * _impacts(rate, length, fs, rng, modulation, depth)
    return signal + np.convolve(train, _resonance(fs, *BEARING_RESONANCE))[:length]


def add_noise(signal: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """``signal`` plus white Gaussian noise scaled so that this realisation's SNR is ``snr`` dB."""
    noise = rng.standard_normal(signal.shape)
    noise *= math.sqrt(np.mean(signal**2) / (10 ** (snr / 10)) / np.mean(noise**2))
    return signal + noise


def measured_snr(clean: np.ndarray | torch.Tensor, noisy: np.ndarray | torch.Tensor) -> float:
    """10 log10(P_clean / P_(noisy - clean)), the SNR a noisy signal has."""
    clean, noisy = np.asarray(clean, dtype=np.float64), np.asarray(noisy, dtype=np.float64)
    return 10 * math.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))


def make_dataset(snr_db: float | None, n_per_class: int, length: int = LENGTH, fs: float = FS, seed: int = 0,
                 test_fraction: float = 0.2):
    """The simulated data set, as the comparison harness's ``Dataset``: (N, 1, length) float32
    signals in physical units (no standardisation), labels 0..7 (``CLASSES``); per class the
    first ``1 - test_fraction`` of the signals train and the rest test. ``snr_db`` None: the
    clean signals; else white noise at that SNR on every signal. Deterministic per ``seed``:
    signal i of a class is the same whatever ``n_per_class`` and ``snr_db``."""
    from .builtin import Dataset

    if n_per_class < 2:
        raise ValueError(f"n_per_class must be at least 2 (a train and a test signal), got {n_per_class}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if snr_db is not None and not (math.isfinite(snr_db) and abs(snr_db) <= MAX_SNR_DB):
        raise ValueError(f"snr_db must be None or a number of dB in [-{MAX_SNR_DB}, {MAX_SNR_DB}], got "
                         f"{snr_db}")
    n_test = min(n_per_class - 1, max(1, round(test_fraction * n_per_class)))
    splits: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for label in range(len(CLASSES)):
        for i in range(n_per_class):
            x = simulate(label, np.random.default_rng([seed, label, i]), length, fs)
            if snr_db is not None:
                x = add_noise(x, snr_db, np.random.default_rng([seed, label, i, 1]))
            xs, ys = splits["train" if i < n_per_class - n_test else "test"]
            xs.append(x)
            ys.append(label)
    out = {}
    for split, (xs, ys) in splits.items():
        order = np.random.default_rng([seed, 2]).permutation(len(ys))  # classes interleaved
        out[f"{split}_x"] = torch.from_numpy(np.stack(xs)[order].astype(np.float32)).unsqueeze(1)
        out[f"{split}_y"] = torch.from_numpy(np.asarray(ys, dtype=np.int64)[order])
    name = "bearing" if snr_db is None else f"bearing-snr{snr_db:g}"
    return Dataset(name, out["train_x"], out["train_y"], out["test_x"], out["test_y"],
                   num_classes=len(CLASSES))
