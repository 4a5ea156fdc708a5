"""Knowledge base: ingest documents and images, retrieve them for the chat (RAG)."""
