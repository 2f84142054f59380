"""The paper encoder with the real model (it ships in a package): deterministic unit vectors
that put a paper near what it is about."""

import numpy as np
import pytest

from digest.embedding_store import dequantize, quantize
from digest.encoder import DIMENSION, MODEL_NAME, available, load_encoder, paper_text

ROBOTICS = paper_text(
    "Learning dexterous manipulation from human videos",
    "We train a robot arm to grasp and manipulate objects with a policy learned from "
    "demonstrations, and transfer it from simulation to the real robot.",
)
CRYPTO = paper_text(
    "Post-quantum key exchange with lattice assumptions",
    "We propose a key encapsulation mechanism whose security reduces to the hardness of "
    "module learning with errors, with a proof in the quantum random oracle model.",
)


@pytest.fixture(scope="module")
def encoder():
    loaded = load_encoder(kind="minilm")
    assert loaded is not None, "the model packages are dependencies of the default install"
    return loaded


def test_the_default_install_has_the_model():
    assert available()


def test_vectors_are_unit_float32_rows_in_order(encoder):
    rows = encoder.encode([ROBOTICS, CRYPTO, ""])
    assert rows.shape == (3, DIMENSION) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, DIMENSION)


def test_a_text_gets_the_same_vector_whatever_it_is_batched_with(encoder):
    alone = encoder.encode([ROBOTICS])[0]
    again = encoder.encode([ROBOTICS])[0]
    assert np.array_equal(alone, again)
    # In a batch with a longer and a shorter text (so with padding), and in another position.
    batched = encoder.encode([CRYPTO, "robots", ROBOTICS])[2]
    assert float(alone @ batched) > 0.99999


def test_batches_hold_to_the_text_and_word_piece_limits():
    from digest.encoder import batches

    lengths = [250, 5, 7, 256, 6, 120, 5, 240, 9, 300]
    chunks = batches(lengths, batch_size=3, max_pieces=512)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) <= 3
        if len(chunk) > 1:
            assert len(chunk) * max(lengths[i] for i in chunk) <= 512
    # Shortest first; the short texts fill a batch, long ones go two at a time, the one over
    # the budget alone.
    assert chunks == [[1, 6, 4], [2, 8, 5], [7, 0], [3], [9]]


def test_abstracts_get_the_vectors_they_get_alone(encoder):
    # Long texts are split into several batches by the word-piece budget: each keeps its own
    # vector and its place.
    texts = [ROBOTICS * 3, "robots", CRYPTO * 3, CRYPTO, ROBOTICS * 2, "ciphers"] * 3
    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    assert np.min(np.sum(together * alone, axis=1)) > 0.99999


def test_a_robotics_paper_is_closer_to_robot_learning_than_a_cryptography_one(encoder):
    query, robotics, crypto = encoder.encode(["robot learning", ROBOTICS, CRYPTO])
    assert query @ robotics > query @ crypto + 0.2
    cryptography = encoder.encode(["cryptography"])[0]
    assert cryptography @ crypto > cryptography @ robotics + 0.2


def test_text_is_truncated_at_256_word_pieces(encoder):
    long = ROBOTICS + " " + " ".join(["lattice"] * 600)
    longer = long + " " + " ".join(["banana"] * 600)
    first, second = encoder.encode([long, longer])
    assert np.array_equal(first, second)


def test_the_model_identity_names_the_vector_space(encoder):
    assert encoder.model_name == MODEL_NAME
    assert encoder.model_key == f"{MODEL_NAME}@{encoder.model_version}"
    assert encoder.model_version.startswith("1.0.0-") and len(encoder.model_version) == 18
    assert load_encoder(kind="minilm") is encoder  # loaded once per process


def test_tfidf_setting_means_no_encoder():
    assert load_encoder(kind="tfidf") is None


def test_paper_text_is_title_then_abstract():
    assert paper_text(" A title ", "An abstract. ") == "A title\nAn abstract."
    assert paper_text("Only a title", "") == "Only a title"


def test_int8_storage_keeps_the_direction(encoder):
    rows = encoder.encode([ROBOTICS, CRYPTO])
    values, scales = quantize(rows)
    assert values.dtype == np.int8 and values.nbytes == 2 * DIMENSION
    back = dequantize(values, scales)
    assert np.all(np.sum(back * rows, axis=1) > 0.9999)
    assert np.allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-5)
