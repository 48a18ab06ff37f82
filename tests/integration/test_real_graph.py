"""The builder on the real 512^3 EM segmentation (skipped where ../shared is absent)."""

import pytest

from raymesh.graph import open_store
from raymesh.volume import read_block
from support import assert_ids_in_their_chunks, assert_roots_partition_objects, assert_skip_rule

pytestmark = pytest.mark.real_data


def test_real_volume_roots_partition_voxels(real_graph, real_labels):
    store = open_store(real_graph.store_url)
    ws = read_block(store.meta.segmentation_path, 0, (0, 0, 0), real_labels.shape)
    n_roots = assert_roots_partition_objects(store, ws, real_labels)
    assert n_roots == real_graph.node_counts[store.meta.layer_count]
    assert_ids_in_their_chunks(store, ws, (64, 64, 64))
    assert_skip_rule(store)
