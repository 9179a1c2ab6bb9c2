"""The client: ``hoody-tunnel connect`` (cli.py, connector.py, specs.py) and the admin SDK and CLI
(admin.py, admin_cli.py). Never imports tunnel.server or tunnel.api."""
