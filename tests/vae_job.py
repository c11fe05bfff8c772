"""The keras.io variational autoencoder (examples/generative/vae.py, Keras 3 version) as a job.

``Sampling``, the encoder, the decoder and ``VAE`` are the example's code as
published: a subclassed ``Model`` with its own ``train_step``, no ``call``
(Keras cannot build it symbolically; its variables come into being when the
train step is traced) and logs keyed ``loss`` while its trackers are named
``total_loss``. The data are random images in [0, 1] instead of MNIST (a few
steps, no download); ``term_at_step`` makes a callback send SIGTERM to its
own process after that global step, so a test can stop the run exactly at
an epoch's last step.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

import trainer
from trainer import setting

EPOCHS = 3


@dataclass
class Settings:
    examples: int = 256
    batch_size: int = 32
    shuffle: bool = True
    term_at_step: int | None = setting(None, may_change=True, help="SIGTERM this process during this global step")


# --- keras.io examples/generative/vae.py, as published ---------------------------------
class Sampling(layers.Layer):
    """Uses (z_mean, z_log_var) to sample z, the vector encoding a digit."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        batch = ops.shape(z_mean)[0]
        dim = ops.shape(z_mean)[1]
        epsilon = keras.random.normal(shape=(batch, dim), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon


def build_encoder(latent_dim=2):
    encoder_inputs = keras.Input(shape=(28, 28, 1))
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(encoder_inputs)
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling()([z_mean, z_log_var])
    return keras.Model(encoder_inputs, [z_mean, z_log_var, z], name="encoder")


def build_decoder(latent_dim=2):
    latent_inputs = keras.Input(shape=(latent_dim,))
    x = layers.Dense(7 * 7 * 64, activation="relu")(latent_inputs)
    x = layers.Reshape((7, 7, 64))(x)
    x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
    decoder_outputs = layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(x)
    return keras.Model(latent_inputs, decoder_outputs, name="decoder")


class VAE(keras.Model):
    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(
            name="reconstruction_loss"
        )
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self):
        return [
            self.total_loss_tracker,
            self.reconstruction_loss_tracker,
            self.kl_loss_tracker,
        ]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            z_mean, z_log_var, z = self.encoder(data)
            reconstruction = self.decoder(z)
            reconstruction_loss = ops.mean(
                ops.sum(
                    keras.losses.binary_crossentropy(data, reconstruction),
                    axis=(1, 2),
                )
            )
            kl_loss = -0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
            kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
            total_loss = reconstruction_loss + kl_loss
        grads = tape.gradient(total_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.total_loss_tracker.update_state(total_loss)
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.kl_loss_tracker.update_state(kl_loss)
        return {
            "loss": self.total_loss_tracker.result(),
            "reconstruction_loss": self.reconstruction_loss_tracker.result(),
            "kl_loss": self.kl_loss_tracker.result(),
        }
# --- end of the example's code -------------------------------------------------------


class TermAtStep(keras.callbacks.Callback):
    """Sends SIGTERM to this process as global step ``step`` begins, so the trainer stops at the
    boundary right after it (a resumed run, already past it, never sends it again)."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def images(s: Settings) -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(s.examples, 28, 28, 1)).astype("float32")


def build_model(s: Settings) -> keras.Model:
    vae = VAE(build_encoder(), build_decoder())
    vae.compile(optimizer=keras.optimizers.Adam())
    return vae


def build_data(s: Settings):
    return trainer.ArrayData(images(s), batch_size=s.batch_size, shuffle=s.shuffle)


def callbacks(s: Settings):
    return [TermAtStep(s.term_at_step)] if s.term_at_step else []
