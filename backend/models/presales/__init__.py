"""LLM ⇄ CRS collaboration on four pre-sales tasks (understanding, needs elicitation,
recommendation, response generation), after "Large Language Models and Conversational
Recommender Systems: A Collaborative Approach for Pre-sales Dialogue" (see docs/models.md)."""
