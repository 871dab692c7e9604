from tests.routing.conftest import chat_dir, chat_model, fake_providers  # noqa: F401  (fixtures shared with routing)
