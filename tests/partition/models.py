"""Small models with the graph features splitting must survive (builders, not fixtures, so
other test folders can use them too)."""

from __future__ import annotations

import numpy as np


def randomize(model, seed: int = 0):
    """Random weights everywhere (BatchNorm too), so no layer is an identity in disguise."""
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.weights:
        shape, name = tuple(w.shape), w.path
        if "moving_variance" in name:
            weights.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        else:
            weights.append(rng.normal(0, 0.3, shape).astype(np.float32))
    model.set_weights(weights)
    return model


def multi_io_model():
    """Two inputs, two outputs; a skip (Add), a concat of both branches, and an output
    ('early') that is ready long before the end and must be carried through."""
    import keras
    from keras import layers

    image = keras.Input((12, 12, 3), name="image")
    meta = keras.Input((6,), name="meta")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(image)
    y = layers.Conv2D(8, 3, padding="same", name="branch")(x)
    y = layers.BatchNormalization(name="branch_bn")(y)
    z = layers.Add(name="skip")([x, y])
    early = layers.Dense(4, name="early")(meta)
    pooled = layers.GlobalAveragePooling2D(name="pool")(z)
    m = layers.Dense(8, activation="relu", name="meta_dense")(meta)
    joined = layers.Concatenate(name="join")([pooled, m])
    out = layers.Dense(10, activation="softmax", name="classes")(joined)
    return randomize(keras.Model([image, meta], [out, early], name="multi_io"))


def sequential_model():
    import keras
    from keras import layers

    return randomize(keras.Sequential([
        keras.Input((10, 10, 1)),
        layers.Conv2D(6, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(12, 3, padding="same"),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(16, activation="tanh"),
        layers.Dense(5),
    ], name="seq"), seed=1)


def random_inputs(specs, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in specs}


def digits_cnn():
    """The demo's digits CNN shape (8x8x1 -> 10), random weights: conversion takes seconds."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((8, 8, 1), name="digit"),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(10, activation="softmax"),
    ], name="digits_rand")


def digits(count: int | None = None, offset: int = 0) -> np.ndarray:
    """sklearn's digits as the CNN takes them: [N, 8, 8, 1] float32 in 0..1."""
    from sklearn.datasets import load_digits

    images = (load_digits().images / 16.0).astype(np.float32)[..., None]
    return images[offset:offset + count if count else None]
