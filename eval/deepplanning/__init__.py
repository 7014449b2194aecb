"""DeepPlanning travel planning (Table 7): sandbox tools, agent environment, plan parser, scorers.

    eval.deepplanning.database   one task's CSV tables (loaded once, cached), the folder check
    eval.deepplanning.tools      the 9 tools with the official matching, texts and result shapes
    eval.deepplanning.prompts    our instructions; the final plan from <plan> after the last </think>
    eval.deepplanning.plan_parser  plan text -> structured plan (rule-based; the official one is an LLM)
    eval.deepplanning.scoring    personalized constraints, 8 commonsense dimensions, Avg@k / Best@k
    eval.deepplanning.env        TravelPlanningEnv: opsd.environment.Environment for training and eval
    eval.deepplanning.files      where its files are (the one locator) and the evaluation's agent limits
    eval.deepplanning.data       the queries, the seeded 80/20 split, the database check
    eval.deepplanning.evaluate   eval.run's `deepplanning_travel` benchmark (agent episodes)
    eval.deepplanning.fixture    a synthetic two-task database with gold plans (tests, bench)
    eval.deepplanning.bench      tool calls per second

Facts of the official benchmark: ../shared/deepplanning/FORMAT.md (QwenLM/Qwen-Agent,
benchmark/deepplanning). The database (database_en.zip of the Hub data set Qwen/DeepPlanning) is
not shipped; tests run on the synthetic fixture of eval.deepplanning.fixture.
"""
