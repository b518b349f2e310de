pytest_plugins = ["tests.seaweed"]
