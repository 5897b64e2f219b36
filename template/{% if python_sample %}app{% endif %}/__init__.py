"""The sample service (Shipyard `sample_app`): replace it with yours."""
