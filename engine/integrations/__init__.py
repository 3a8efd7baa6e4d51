"""Voice-agent integrations: the streaming session as a Pipecat video service and a LiveKit Agents avatar.

Each integration imports its framework lazily (`[pipecat]`, `[livekit]` extras); `bridge` and `speech`
hold what they share and need only the core dependencies.
"""
