"""layerfleet: one neural network across a fleet of Raspberry Pis and the cloud.

Installed layout (the repository keeps one folder per part, see DESIGN.md):
  layerfleet.v1          generated wire contract (protos/layerfleet/v1/*.proto)
  layerfleet.agent       what runs on a Pi; never imports TensorFlow or the controller
  layerfleet.controller  what runs in the cloud: partitioner, placement, registry, API, CLI
"""

__version__ = "0.1.0"
