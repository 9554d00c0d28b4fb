"""The layerfleet agent: what runs on each Raspberry Pi. Never imports TensorFlow."""
