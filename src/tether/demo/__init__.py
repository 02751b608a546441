"""``tether demo``: a support-triage pipeline of three agents, end to end, on real parts.

A real broker on a temporary state directory, a real upstream HTTP service that accepts
tether credentials, a real MCP server behind the tether MCP gateway — and a scripted
(no LLM) multi-agent run through them. See :mod:`tether.demo.pipeline`.
"""
