"""The `promptbank` commands that talk to a running service over HTTP (its URL: --url or PROMPTBANK_URL; its key:
--key or PROMPTBANK_KEY). Tables for people, --json for scripts; a refusal prints the server's message and exits 1.

client: the HTTP client and printing every command shares; catalog: datasets and tasks; training: train and jobs;
inference: infer; prompt_versions: prompts. app/cli.py mounts the command groups and commands named here.
"""

from app.cli_client.catalog import datasets, tasks
from app.cli_client.client import DEFAULT_URL, Client, CliError
from app.cli_client.inference import infer
from app.cli_client.prompt_versions import prompts
from app.cli_client.training import jobs, train

__all__ = ["DEFAULT_URL", "CliError", "Client", "datasets", "infer", "jobs", "prompts", "tasks", "train"]
