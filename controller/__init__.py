"""The layerfleet controller: what runs on the cloud VM."""
