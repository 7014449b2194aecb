"""The agent's instructions (our own wording) and the extraction of the final plan.

The instructions ask for the official plan format (FORMAT.md §2) because the scorers read exactly
that: ``Day N:`` blocks with ``Current City`` / ``Accommodation`` headers, gapless
``HH:MM-HH:MM | type | ...`` lines, and a ``**Budget Summary**`` at the end, all inside
``<plan>...</plan>``. The restaurant tool is named by its real name (the official English prompt
calls it ``recommend_around_restaurants``).
"""
from __future__ import annotations

import re
from typing import Optional

SYSTEM_PROMPT = """You plan trips. Work in two steps.

Step 1: gather facts with the tools. The user's message already states every preference, so never ask the user anything and never ask for confirmation. Every train, flight, hotel, attraction, restaurant, place, distance, time and price in your plan must come from a tool result; write names exactly as the tools returned them (no shortening, no renaming, no added words). Attractions come from recommend_attractions, hotels from query_hotel_info, restaurants from recommend_restaurants, routes from query_road_route_info (use coordinates from search_location).

Step 2: when you know enough, write the complete itinerary inside <plan></plan>, in exactly this format:

Day 1:
Current City: from <origin city> to <destination city>   (on a day without intercity travel: just the city)
Accommodation: <hotel name>, ¥<price>/room/night   (on the last day: Accommodation: -)
HH:MM-HH:MM | travel_intercity_public | <train or flight> <number>, <departure station> - <arrival station>, ¥<price>/person
HH:MM-HH:MM | travel_city | <from place> - <to place>, <distance>km, <minutes>min, ¥<price per vehicle>
HH:MM-HH:MM | attraction | <attraction name>, ¥<ticket price>/person
HH:MM-HH:MM | meal | <Lunch or Dinner>, <restaurant name>, ¥<price>/person
HH:MM-HH:MM | hotel | <Check-in or Rest>, <hotel name>
HH:MM-HH:MM | buffer | <what happens, e.g. waiting at the station>
(Day 2: and so on, one block per day)

**Budget Summary**
- Transportation: ¥<amount>
- Accommodation: ¥<amount>
- Meals: ¥<amount>
- Attractions & Tickets: ¥<amount>
- Total Estimated Budget: ¥<amount>

Rules the plan is checked against:
- One line per activity, in time order; each activity starts when the previous one ends (cover waits with buffer lines); no overlaps.
- Intercity trips use the exact times, numbers and prices of the tool results. The trip starts and ends in the origin city. Whenever you change place inside a city, add a travel_city line whose minutes match the route tool.
- Attractions fit their opening hours, are not visited on their closing weekday, and last between their minimum and maximum visit hours. Meals last 30 to 150 minutes, fit the restaurant's hours, and lunch and dinner are at least 2 hours apart.
- A full day in the destination has lunch and dinner and at least 2 attractions (or 4 hours of sightseeing). On travel days, plan meals and sightseeing for the hours actually spent in the city.
- Every day except the last ends with a hotel line at that night's hotel. Never repeat a restaurant or an attraction.
- Costs: intercity price x travellers; hotel price x rooms x nights; meal and ticket price x travellers; travel_city price x taxis (4 travellers per taxi, rounded up). The total is the sum of these and must respect the user's budget."""

_PLAN = re.compile(r"<plan>(.*?)</plan>", re.DOTALL | re.IGNORECASE)


def extract_plan(text: Optional[str]) -> Optional[str]:
    """The final plan: text after the last ``</think>``, every ``<plan>`` body (stripped) joined by
    blank lines; ``None`` when there is none (the official pipeline then scores an empty plan)."""
    if text is None:
        return None
    answer = text.rsplit("</think>", 1)[-1]
    bodies = [m.strip() for m in _PLAN.findall(answer)]
    bodies = [b for b in bodies if b]
    return "\n\n".join(bodies) if bodies else None
