"""Adapters for agent frameworks. Each module imports its framework only when used:

* ``openai_agents`` — OpenAI Agents SDK function tools (``pip install tether[openai-agents]``)
* ``pydantic_ai``   — Pydantic AI tools (``tether[pydantic-ai]``)
* ``langchain``     — LangChain ``BaseTool`` / ``@tool`` (``tether[langchain]``)
* ``mcp``           — an MCP client session through the tether MCP gateway (``tether[mcp]``)

In every adapter a denied call becomes a tool result the model can read (what was
denied, the policy's reason, the decision id) instead of an exception that ends the run.
"""
