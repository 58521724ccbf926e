"""The demo's own Korean corpus, written for this project: sentences composed from hand-written
templates and word lists across nine topics, deterministic for a seed.

The templates keep meaning coherent (a dish goes with eating, a city with its sights and food,
cold weather with a coat), so a model trained on the text learns real conditional structure and
its next-token distributions are worth distilling. Grammar is handled, not hard-coded:
particles follow the final consonant of the word before them (은/는, 이/가, 을/를, 과/와, 으로/로),
and each predicate is conjugated into one of three speech styles (plain 한다, polite 해요,
formal 합니다) from its dictionary form and its past stem.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

_HANGUL_FIRST, _HANGUL_LAST = 0xAC00, 0xD7A3
_FINAL_COUNT = 28
_RIEUL, _SSANGSIOT, _NIEUN, _BIEUP = 8, 20, 4, 17  # final-consonant indices inside a syllable
# How digits read aloud end (일, 삼, 육, 칠, 팔, 영 end in a consonant; 십 and 백 too).
_DIGIT_FINAL = {"0": 21, "1": 8, "2": 0, "3": 16, "4": 0, "5": 0, "6": 1, "7": 8, "8": 8, "9": 0}


def _final(word: str) -> int:
    """Index of the final consonant of the word's last syllable (0 = ends in a vowel)."""
    last = word.rstrip()[-1]
    if _HANGUL_FIRST <= ord(last) <= _HANGUL_LAST:
        return (ord(last) - _HANGUL_FIRST) % _FINAL_COUNT
    return _DIGIT_FINAL.get(last, 0)


def _with_final(syllable: str, final: int) -> str:
    """``syllable`` with its final consonant replaced (가 + ㄴ -> 간)."""
    base = ord(syllable) - (ord(syllable) - _HANGUL_FIRST) % _FINAL_COUNT
    return chr(base + final)


def josa(word: str, pair: str) -> str:
    """``word`` plus the right form of a particle pair, written consonant-form/vowel-form: ``josa("책", "을/를")``."""
    after_consonant, after_vowel = pair.split("/")
    final = _final(word)
    if after_consonant == "으로":  # a final ㄹ takes 로, like a vowel
        return word + ("로" if final in (0, _RIEUL) else "으로")
    return word + (after_consonant if final else after_vowel)


def copula(noun: str, style: str, past: bool = False) -> str:
    """``noun`` + 이다 conjugated: 학생이다 / 학생이에요 / 학생입니다, 바다였다 / 바다예요 ..."""
    vowel = _final(noun) == 0
    if past:
        stem = "였" if vowel else "이었"
        return noun + stem + {"plain": "다", "polite": "어요", "formal": "습니다"}[style]
    return noun + {"plain": "이다", "polite": "예요" if vowel else "이에요", "formal": "입니다"}[style]


@dataclass(frozen=True)
class Predicate:
    """A verb or adjective phrase: its dictionary form (먹다) and past stem (먹었).

    Every other form follows from these two: the 아/어 form is the past stem without its ㅆ
    (먹었 -> 먹어, 갔 -> 가, 추웠 -> 추워), which also covers the irregular verbs.
    """

    lemma: str
    past: str
    descriptive: bool = False  # adjectives and 있다: plain present is the dictionary form

    @property
    def stem(self) -> str:
        return self.lemma[:-1]

    @property
    def infinitive(self) -> str:
        return self.past[:-1] + _with_final(self.past[-1], 0)

    def say(self, style: str, past: bool) -> str:
        """The sentence-final form in a speech style: plain, polite or formal."""
        if past:
            return self.past + {"plain": "다", "polite": "어요", "formal": "습니다"}[style]
        if style == "polite":
            return self.infinitive + "요"
        stem, final = self.stem, _final(self.stem)
        if style == "formal":
            if final == 0:
                return stem[:-1] + _with_final(stem[-1], _BIEUP) + "니다"
            if final == _RIEUL:  # ㄹ drops: 만들다 -> 만듭니다
                return stem[:-1] + _with_final(stem[-1], _BIEUP) + "니다"
            return stem + "습니다"
        if self.descriptive:
            return self.lemma
        if final == 0:
            return stem[:-1] + _with_final(stem[-1], _NIEUN) + "다"
        if final == _RIEUL:  # 살다 -> 산다
            return stem[:-1] + _with_final(stem[-1], _NIEUN) + "다"
        return stem + "는다"

    def and_then(self) -> str:
        """-고: 먹고, 가고."""
        return self.stem + "고"

    def so(self) -> str:
        """-아서/어서: 먹어서, 추워서."""
        return self.infinitive + "서"

    def want(self) -> "Predicate":
        return Predicate(self.stem + "고 싶다", self.stem + "고 싶었", descriptive=True)

    def doing(self) -> "Predicate":
        return Predicate(self.stem + "고 있다", self.stem + "고 있었", descriptive=True)

    def decided(self) -> "Predicate":
        return Predicate(self.stem + "기로 하다", self.stem + "기로 했")

    def must(self) -> "Predicate":
        return Predicate(self.infinitive + "야 하다", self.infinitive + "야 했")

    def negated(self) -> "Predicate":
        return Predicate(self.stem + "지 않다", self.stem + "지 않았", descriptive=self.descriptive)


def P(lemma: str, past: str, descriptive: bool = False) -> Predicate:
    return Predicate(lemma, past, descriptive)


# --- shared word lists --------------------------------------------------------------------------

NAMES = ["민수", "지영", "서준", "하은", "도윤", "수아", "예준", "지민", "현우", "서연", "준호", "유진", "태민", "소희", "정우", "다은"]
FAMILY = ["동생", "언니", "형", "누나", "오빠", "할머니", "할아버지", "아버지", "어머니", "삼촌", "이모", "사촌 동생"]
OTHERS = ["친구", "옆집 아저씨", "회사 동료", "대학 선배", "룸메이트", "반 친구들", "우리 가족", "동네 어르신들"]
PAST_TIMES = ["어제", "어제 저녁에", "오늘 아침에", "지난 주말에", "지난 토요일에", "점심시간에", "퇴근 후에", "새벽에", "작년 겨울에", "며칠 전에"]
NOW_TIMES = ["요즘", "매일 아침", "주말마다", "저녁마다", "평일에는", "가끔", "시간이 날 때마다"]
LATELY = ["요즘", "지금"]  # for actions in progress
DAYS = ["월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일"]
HOURS = ["여섯", "일곱", "여덟", "아홉", "열"]
STYLES = ("plain", "plain", "polite", "formal")  # plain prose is the most common written style


def _person(r: random.Random) -> str:
    pool = r.choice((NAMES, NAMES, FAMILY, OTHERS))
    return r.choice(pool)


def _end(predicate: Predicate, past: bool, style: str) -> str:
    return predicate.say(style, past) + "."


# --- topics -----------------------------------------------------------------------------------
# Each topic is one function: pick the words, compose, conjugate. Past-tense narration and
# present-tense habit or fact both appear, in the three speech styles.

CHORES = [("방", P("청소하다", "청소했")), ("빨래", P("하다", "했")), ("설거지", P("하다", "했")),
          ("이불", P("개다", "갰")), ("쓰레기", P("버리다", "버렸")), ("화분", P("옮기다", "옮겼")),
          ("창문", P("닦다", "닦았")), ("옷장", P("정리하다", "정리했")), ("신발", P("빨다", "빨았"))]
EVENING = [("책", P("읽다", "읽었")), ("일기", P("쓰다", "썼")), ("음악", P("듣다", "들었")),
           ("드라마", P("보다", "봤")), ("따뜻한 우유", P("마시다", "마셨")), ("내일 일정", P("확인하다", "확인했")),
           ("스트레칭", P("하다", "했")), ("강아지", P("산책시키다", "산책시켰"))]
SHOPS = {"시장": ["사과", "배추", "생선", "고추", "떡"], "마트": ["우유", "휴지", "세제", "라면", "계란"],
         "편의점": ["삼각김밥", "물", "커피", "과자", "도시락"], "서점": ["소설책", "잡지", "문제집", "지도", "만화책"],
         "꽃집": ["장미", "튤립", "해바라기", "화분", "꽃다발"], "빵집": ["식빵", "케이크", "크루아상", "단팥빵", "쿠키"]}
BUY = P("사다", "샀")


def daily_life(r: random.Random, style: str) -> str:
    who = _person(r)
    kind = r.randrange(5)
    if kind == 0:
        thing, verb = r.choice(CHORES)
        return f"{r.choice(PAST_TIMES)} {josa(who, '은/는')} 집에서 {josa(thing, '을/를')} {_end(verb, True, style)}"
    if kind == 1:
        (a, first), (b, then) = r.sample(CHORES, 2)
        return (f"{josa(who, '은/는')} 매일 아침 {r.choice(HOURS)} 시에 일어나서 {josa(a, '을/를')} {first.and_then()} "
                f"{josa(b, '을/를')} {_end(then, False, style)}")
    if kind == 2:
        thing, verb = r.choice(EVENING)
        return f"{josa(who, '은/는')} 잠들기 전에 {josa(thing, '을/를')} {_end(verb, r.random() < 0.5, style)}"
    if kind == 3:
        shop = r.choice(list(SHOPS))
        items = r.sample(SHOPS[shop], 2)
        friend = _person(r)
        return (f"{r.choice(PAST_TIMES)} {josa(who, '은/는')} {josa(friend, '과/와')} 함께 {shop}에 가서 "
                f"{josa(items[0], '과/와')} {josa(items[1], '을/를')} {_end(BUY, True, style)}")
    thing, verb = r.choice(EVENING + CHORES)
    return f"{r.choice(LATELY)} {josa(who, '은/는')} {josa(thing, '을/를')} {_end(verb.doing(), False, style)}"


WEATHER = [  # (predicate, what people do because of it)
    (P("춥다", "추웠", True), [("두꺼운 외투", P("입다", "입었")), ("따뜻한 차", P("마시다", "마셨")), ("목도리", P("두르다", "둘렀"))]),
    (P("덥다", "더웠", True), [("에어컨", P("켜다", "켰")), ("아이스크림", P("먹다", "먹었")), ("얇은 옷", P("입다", "입었"))]),
    (P("맑다", "맑았", True), [("빨래", P("널다", "널었")), ("자전거", P("타다", "탔")), ("사진", P("찍다", "찍었"))]),
    (P("흐리다", "흐렸", True), [("우산", P("챙기다", "챙겼")), ("실내 운동", P("하다", "했")), ("창문", P("닫다", "닫았"))]),
    (P("쌀쌀하다", "쌀쌀했", True), [("겉옷", P("챙기다", "챙겼")), ("따뜻한 국물", P("먹다", "먹었")), ("보일러", P("켜다", "켰"))]),
    (P("따뜻하다", "따뜻했", True), [("창문", P("열다", "열었")), ("공원 산책", P("하다", "했")), ("봄옷", P("꺼내다", "꺼냈"))]),
]
SKY = [("비", "이/가", P("오다", "왔")), ("눈", "이/가", P("내리다", "내렸")), ("바람", "이/가", P("불다", "불었")),
       ("소나기", "이/가", P("쏟아지다", "쏟아졌")), ("안개", "이/가", P("끼다", "꼈")), ("우박", "이/가", P("떨어지다", "떨어졌"))]
REGIONS = ["서울", "부산", "대구", "인천", "광주", "대전", "강원도", "제주도", "남부 지방", "중부 지방", "해안 지역", "산간 지역"]
FORECASTS = ["비가 내릴", "눈이 올", "소나기가 내릴", "기온이 크게 떨어질", "미세먼지가 심할", "바람이 강하게 불", "무더위가 계속될", "황사가 나타날"]
WHEN_NEXT = ["내일", "모레", "이번 주말", "다음 주", "오늘 밤", "내일 오후"]


def weather(r: random.Random, style: str) -> str:
    kind = r.randrange(4)
    if kind == 0:
        feeling, _ = r.choice(WEATHER)
        return f"{r.choice(['오늘', '어제'])} {josa(r.choice(REGIONS), '은/는')} 하루 종일 {_end(feeling, r.random() < 0.4, style)}"
    if kind == 1:
        feeling, reactions = r.choice(WEATHER)
        thing, verb = r.choice(reactions)
        return f"날씨가 {feeling.so()} {josa(_person(r), '은/는')} {josa(thing, '을/를')} {_end(verb, True, style)}"
    if kind == 2:
        when = r.choice(WHEN_NEXT)
        return f"기상청은 {when} {r.choice(REGIONS)}에 {r.choice(FORECASTS)} 것이라고 {_end(P('예보하다', '예보했'), True, style)}"
    noun, pair, verb = r.choice(SKY)
    amount, verb = ("많이 ", verb) if r.random() < 0.7 else ("", verb.negated())
    return f"{r.choice(PAST_TIMES)} {r.choice(REGIONS)}에는 {josa(noun, pair)} {amount}{_end(verb, True, style)}"


DISHES = ["김치찌개", "된장찌개", "비빔밥", "불고기", "떡볶이", "냉면", "잡채", "삼계탕", "칼국수", "김밥",
          "순두부찌개", "갈비탕", "제육볶음", "해물파전", "라면", "볶음밥", "미역국", "콩나물국밥"]
MEALS = ["아침", "점심", "저녁", "간식", "야식"]
TASTES = [P("맛있다", "맛있었", True), P("맵다", "매웠", True), P("짜다", "짰", True), P("달다", "달았", True),
          P("싱겁다", "싱거웠", True), P("고소하다", "고소했", True), P("담백하다", "담백했", True), P("시원하다", "시원했", True)]
PLACES_TO_EAT = ["회사 앞 식당", "학교 식당", "시장 골목 작은 가게", "동네 분식집", "할머니 댁", "새로 생긴 식당"]
RECIPE_STEPS = [("양파", P("썰다", "썰었")), ("대파", P("다지다", "다졌")), ("감자", P("깎다", "깎았")),
                ("두부", P("굽다", "구웠")), ("돼지고기", P("볶다", "볶았")), ("물", P("끓이다", "끓였")),
                ("콩나물", P("데치다", "데쳤")), ("쌀", P("씻다", "씻었")), ("육수", P("내다", "냈")),
                ("김치", P("볶다", "볶았")), ("계란", P("풀다", "풀었")), ("버섯", P("손질하다", "손질했"))]
DRINKS = ["녹차", "커피", "식혜", "보리차", "유자차", "우유", "오렌지 주스"]
EAT, DRINK = P("먹다", "먹었"), P("마시다", "마셨")


def food(r: random.Random, style: str) -> str:
    dish = r.choice(DISHES)
    kind = r.randrange(5)
    if kind == 0:
        return f"{josa(_person(r), '은/는')} {josa(r.choice(MEALS), '으로/로')} {josa(dish, '을/를')} {_end(EAT, True, style)}"
    if kind == 1:
        return f"{r.choice(PLACES_TO_EAT)}의 {josa(dish, '은/는')} 정말 {_end(r.choice(TASTES), r.random() < 0.5, style)}"
    if kind == 2:
        (a, first), (b, second) = r.sample(RECIPE_STEPS, 2)
        return (f"{josa(dish, '을/를')} 만들려면 먼저 {josa(a, '을/를')} {first.and_then()} "
                f"{josa(b, '을/를')} {_end(second.must(), False, style)}")
    if kind == 3:
        return f"{josa(_person(r), '은/는')} 식사 후에 {josa(r.choice(DRINKS), '을/를')} {_end(DRINK, r.random() < 0.5, style)}"
    me = "나는" if style == "plain" else "저는"  # a wish is said in the first person
    return f"{me} {r.choice(['오늘', '이번 주말에', '내일'])} {josa(dish, '을/를')} {_end(EAT.want(), False, style)}"


CITIES = {  # city -> (sights, local food)
    "부산": (["해운대 바다", "감천문화마을", "자갈치 시장", "광안대교 야경"], ["돼지국밥", "밀면", "어묵"]),
    "경주": (["불국사", "첨성대", "석굴암", "대릉원"], ["황남빵", "쌈밥", "찰보리빵"]),
    "제주도": (["한라산", "성산일출봉", "우도", "협재 해변"], ["흑돼지", "고기국수", "귤"]),
    "강릉": (["경포대", "안목 해변", "오죽헌", "정동진"], ["초당순두부", "감자옹심이", "장칼국수"]),
    "전주": (["한옥마을", "경기전", "전동성당", "남부시장"], ["비빔밥", "콩나물국밥", "초코파이"]),
    "여수": (["밤바다", "오동도", "향일암", "해상 케이블카"], ["갓김치", "게장", "서대회"]),
    "속초": (["설악산", "영금정", "대포항", "청초호"], ["오징어순대", "닭강정", "물회"]),
    "안동": (["하회마을", "도산서원", "월영교", "병산서원"], ["찜닭", "간고등어", "헛제삿밥"]),
    "춘천": (["남이섬", "소양강 댐", "의암호", "김유정 문학촌"], ["닭갈비", "막국수", "감자빵"]),
}
SEASONS = ["봄", "여름", "가을", "겨울", "방학", "연휴", "휴가"]
TRANSPORT = ["기차", "고속버스", "비행기", "자동차", "배"]


def travel(r: random.Random, style: str) -> str:
    city = r.choice(list(CITIES))
    sights, foods = CITIES[city]
    who = _person(r)
    kind = r.randrange(5)
    if kind == 0:
        return (f"{josa(who, '은/는')} {r.choice(SEASONS)}에 {josa(r.choice(TRANSPORT), '을/를')} 타고 "
                f"{josa(city, '으로/로')} 여행을 {_end(P('가다', '갔'), True, style)}")
    if kind == 1:
        return f"{city}에 가면 {josa(r.choice(sights), '을/를')} 꼭 {_end(P('보다', '봤').must(), False, style)}"
    if kind == 2:
        return f"{city} 여행에서 가장 기억에 남는 곳은 {copula(r.choice(sights), style, past=True)}."
    if kind == 3:
        return (f"{josa(who, '은/는')} {city}에서 {josa(r.choice(sights), '을/를')} {P('구경하다', '구경했').and_then()} "
                f"{josa(r.choice(foods), '을/를')} {_end(EAT, True, style)}")
    first, second = r.sample(foods, 2)
    return f"{city}의 유명한 음식은 {josa(first, '과/와')} {copula(second, style)}."


WORK_TOPICS = ["새 프로젝트 계획", "지난 분기 매출", "신제품 디자인", "고객 설문 결과", "내년 예산안", "마케팅 전략",
               "서비스 개선 방안", "해외 진출 계획", "채용 일정", "보안 점검 결과"]
MEETINGS = ["아침 회의", "주간 회의", "전체 회의", "팀 회의", "임원 회의"]
DOCUMENTS = ["보고서", "발표 자료", "계약서", "기획안", "견적서", "회의록"]
COMPANIES = ["우리 회사", "그 스타트업", "한 대기업", "지역 은행", "온라인 쇼핑몰", "게임 회사"]
TASKS = [("고객 응대", P("맡다", "맡았")), ("자료 조사", P("하다", "했")), ("일정", P("조율하다", "조율했")),
         ("신입 사원 교육", P("담당하다", "담당했")), ("예산", P("검토하다", "검토했")), ("거래처 방문", P("준비하다", "준비했"))]


def work(r: random.Random, style: str) -> str:
    who = r.choice(NAMES) + r.choice([" 씨", " 대리", " 과장", " 팀장", " 사원"])
    kind = r.randrange(5)
    if kind == 0:
        return f"{josa(who, '은/는')} {r.choice(MEETINGS)}에서 {josa(r.choice(WORK_TOPICS), '을/를')} {_end(P('발표하다', '발표했'), True, style)}"
    if kind == 1:
        return f"{josa(who, '은/는')} 마감 전에 {josa(r.choice(DOCUMENTS), '을/를')} 끝내려고 야근을 {_end(P('하다', '했'), True, style)}"
    if kind == 2:
        task, verb = r.choice(TASKS)
        return f"이번 주부터 {josa(who, '이/가')} {josa(task, '을/를')} {_end(verb, False, style)}"
    if kind == 3:
        n = r.choice([5, 10, 12, 20, 30, 50, 100])
        return f"{josa(r.choice(COMPANIES), '은/는')} 올해 신입 사원 {n}명을 {_end(P('뽑다', '뽑았').decided(), True, style)}"
    late = r.choice(["지하철이 늦게 와서", "길이 많이 막혀서", "알람을 못 들어서", "버스를 놓쳐서"])
    return f"출근길에 {late} {josa(who, '은/는')} {r.choice(MEETINGS)}에 조금 {_end(P('늦다', '늦었'), True, style)}"


SUBJECTS = {  # subject -> concepts a teacher explains
    "수학": ["이차방정식", "확률", "피타고라스 정리", "미분", "수열", "함수의 그래프"],
    "과학": ["광합성", "뉴턴의 운동 법칙", "원소 주기율표", "세포 분열", "전기 회로", "물의 순환"],
    "역사": ["조선 시대의 신분 제도", "임진왜란", "한글 창제", "삼국 시대", "산업 혁명", "고려의 불교 문화"],
    "국어": ["시의 운율", "소설의 시점", "높임 표현", "문장 성분", "토론의 규칙", "맞춤법"],
    "영어": ["현재완료 시제", "관계대명사", "수동태", "가정법", "듣기 전략", "영작문"],
    "사회": ["민주주의의 원리", "수요와 공급", "지방 자치", "인권", "세계화", "선거 제도"],
}
STUDY_PLACES = ["도서관", "독서실", "카페", "교실", "집", "스터디 카페"]
CLUBS = ["밴드", "축구", "사진", "독서", "코딩", "연극", "합창", "봉사"]
STUDENTS = ["학생들", "고등학생", "중학생", "대학생", "신입생"] + NAMES


def school(r: random.Random, style: str) -> str:
    subject = r.choice(list(SUBJECTS))
    concept = r.choice(SUBJECTS[subject])
    student = r.choice(STUDENTS)
    kind = r.randrange(5)
    if kind == 0:
        return f"{josa(student, '은/는')} {subject} 시험을 위해 {r.choice(STUDY_PLACES)}에서 {_end(P('공부하다', '공부했'), True, style)}"
    if kind == 1:
        return f"{subject} 선생님은 학생들에게 {josa(concept, '을/를')} {_end(P('설명하다', '설명했'), True, style)}"
    if kind == 2:
        return f"{josa(student, '은/는')} {josa(concept, '이/가')} 어려워서 {_end(P('복습하다', '복습했').decided(), True, style)}"
    if kind == 3:
        return f"{josa(student, '은/는')} 새 학기에 {r.choice(CLUBS)} 동아리에 {_end(P('가입하다', '가입했'), True, style)}"
    return f"이번 {subject} 수업의 주제는 {copula(concept, style)}."


PLANETS = ["수성", "금성", "지구", "화성", "목성", "토성", "천왕성", "해왕성"]
ORDINALS = ["첫", "두", "세", "네", "다섯", "여섯", "일곱", "여덟"]
ELEMENTS = [("수소", "H"), ("헬륨", "He"), ("탄소", "C"), ("질소", "N"), ("산소", "O"), ("나트륨", "Na"), ("철", "Fe"), ("금", "Au"), ("은", "Ag"), ("구리", "Cu")]
ANIMALS = [("펭귄", "남극", "물고기"), ("판다", "대나무 숲", "대나무"), ("코알라", "유칼립투스 숲", "유칼립투스 잎"),
           ("낙타", "사막", "마른 풀"), ("북극곰", "북극", "물범"), ("기린", "초원", "나뭇잎"), ("꿀벌", "벌집", "꽃꿀"),
           ("다람쥐", "숲", "도토리"), ("수달", "강가", "물고기"), ("두루미", "습지", "작은 물고기")]
FACTS = ["물은 섭씨 100도에서 끓고 0도에서 언다", "빛은 1초에 약 30만 킬로미터를 간다",
         "지구는 태양 주위를 약 365일에 한 바퀴 돈다", "달은 스스로 빛을 내지 못하고 햇빛을 반사한다",
         "식물은 햇빛을 이용해 이산화탄소와 물로 양분을 만든다", "소리는 공기보다 물속에서 더 빠르게 전달된다",
         "지구의 대기는 대부분 질소와 산소로 이루어져 있다", "사람의 몸은 약 60퍼센트가 물로 이루어져 있다"]
RESEARCH = [("새로운 배터리 소재", "충전 속도를 높이는 방법"), ("바닷속 미생물", "플라스틱을 분해하는 효소"),
            ("뇌의 신경 회로", "기억이 저장되는 원리"), ("먼 은하의 빛", "우주가 팽창하는 속도"),
            ("식물의 유전자", "가뭄에 강한 품종을 만드는 방법"), ("인공지능 모델", "문장을 더 정확히 번역하는 방법")]


def science(r: random.Random, style: str) -> str:
    kind = r.randrange(5)
    if kind == 0:
        i = r.randrange(len(PLANETS))
        return f"{josa(PLANETS[i], '은/는')} 태양에서 {ORDINALS[i]} 번째로 가까운 {copula('행성', style)}."
    if kind == 1:
        name, symbol = r.choice(ELEMENTS)
        return f"원소 기호가 {symbol}인 원소는 {copula(name, style)}."
    if kind == 2:
        animal, home, meal = r.choice(ANIMALS)
        return f"{josa(animal, '은/는')} 주로 {home}에 살며 {josa(meal, '을/를')} {_end(EAT, False, style)}"
    if kind == 3:
        return FACTS[r.randrange(len(FACTS))] + "."
    subject, finding = r.choice(RESEARCH)
    team = r.choice(["한 대학 연구진", "국내 연구팀", "국제 공동 연구팀", "한 연구소"])
    return f"{josa(team, '은/는')} {josa(subject, '을/를')} 연구하여 {josa(finding, '을/를')} {_end(P('찾아내다', '찾아냈'), True, style)}"


TEAMS = ["서울 팀", "부산 팀", "대구 팀", "광주 팀", "인천 팀", "대전 팀", "수원 팀", "울산 팀"]
SPORTS = ["축구", "농구", "야구", "배드민턴", "탁구", "테니스", "수영", "볼링", "배구"]
EVENTS = ["양궁", "태권도", "쇼트트랙", "펜싱", "유도", "역도", "사격", "수영"]
EXERCISES = [("한 시간씩", P("걷다", "걸었")), ("자전거를", P("타다", "탔")), ("줄넘기를", P("하다", "했")),
             ("계단을", P("오르다", "올랐")), ("공원을", P("달리다", "달렸")), ("요가를", P("하다", "했"))]


def sports(r: random.Random, style: str) -> str:
    kind = r.randrange(5)
    if kind == 0:
        home, away = r.sample(TEAMS, 2)
        a, b = r.randint(1, 5), r.randint(0, 4)
        won = a > b
        result = P("이기다", "이겼") if won else P("지다", "졌") if a < b else P("비기다", "비겼")
        return f"{josa(home, '은/는')} {josa(away, '과/와')}의 경기에서 {josa(f'{a} 대 {b}', '으로/로')} {_end(result, True, style)}"
    if kind == 1:
        return f"{josa(_person(r), '은/는')} 매주 {r.choice(DAYS)}마다 {josa(r.choice(SPORTS), '을/를')} {_end(P('하다', '했'), False, style)}"
    if kind == 2:
        who = r.choice(["그 선수", "우리나라 대표 선수", "막내 선수", "주장"])
        return f"{josa(who, '은/는')} 올림픽 {r.choice(EVENTS)} 경기에서 금메달을 {_end(P('따다', '땄'), True, style)}"
    if kind == 3:
        how, verb = r.choice(EXERCISES)
        return f"{josa(_person(r), '은/는')} 건강을 위해 {r.choice(NOW_TIMES)} {how} {_end(verb, False, style)}"
    return f"경기가 끝나자 {josa(r.choice(['관중들', '팬들', '선수들']), '은/는')} {_end(P('환호하다', '환호했'), True, style)}"


HOLIDAYS = {  # holiday -> customs (object, predicate)
    "설날": [("떡국", P("먹다", "먹었")), ("세배", P("하다", "했")), ("윷놀이", P("하다", "했"))],
    "추석": [("송편", P("빚다", "빚었")), ("성묘", P("가다", "갔")), ("보름달", P("보다", "봤"))],
    "동지": [("팥죽", P("먹다", "먹었")), ("팥죽", P("나누다", "나눴"))],
    "정월 대보름": [("부럼", P("깨다", "깼")), ("오곡밥", P("먹다", "먹었")), ("쥐불놀이", P("하다", "했"))],
    "단오": [("그네", P("타다", "탔")), ("씨름", P("하다", "했"))],
}
SHOWS = ["뮤지컬", "연극", "오페라", "판소리", "발레", "클래식 음악", "국악", "마당놀이"]
VENUES = ["세종문화회관", "예술의전당", "동네 소극장", "야외 공연장", "국립극장", "시민회관"]
EXHIBITS = ["조선 백자", "고려청자", "현대 미술 작품", "옛 지도", "민화", "사진 작품"]
GENRES = ["추리", "역사", "공상 과학", "연애", "성장", "판타지"]


def culture(r: random.Random, style: str) -> str:
    kind = r.randrange(5)
    who = _person(r)
    if kind == 0:
        return f"{r.choice(PAST_TIMES)} {josa(who, '은/는')} {r.choice(VENUES)}에서 {r.choice(SHOWS)} 공연을 {_end(P('보다', '봤'), True, style)}"
    if kind == 1:
        holiday = r.choice(list(HOLIDAYS))
        thing, verb = r.choice(HOLIDAYS[holiday])
        return f"{holiday}에는 가족들이 모여 {josa(thing, '을/를')} {_end(verb, False, style)}"
    if kind == 2:
        return f"{josa(who, '은/는')} {r.choice(LATELY)} {r.choice(GENRES)} 소설을 {_end(P('읽다', '읽었').doing(), False, style)}"
    if kind == 3:
        return (f"{josa(who, '은/는')} 박물관에 가서 {josa(r.choice(EXHIBITS), '을/를')} "
                f"{_end(P('관람하다', '관람했'), r.random() < 0.6, style)}")
    return f"한글은 1443년에 세종대왕이 {_end(P('창제하다', '창제했'), True, style)}"


TOPICS = {
    "daily life": daily_life, "weather": weather, "food": food, "travel": travel, "work": work,
    "school": school, "science": science, "sports": sports, "culture": culture,
}


def demo_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct sentences, topics in turn at random, the same list for the same seed."""
    r = random.Random(seed)
    topics = list(TOPICS.values())
    seen: set[str] = set()
    sentences: list[str] = []
    attempts = 0
    while len(sentences) < count:
        attempts += 1
        if attempts > 50 * count:
            raise ValueError(f"the demo corpus has fewer than {count} distinct sentences")
        sentence = r.choice(topics)(r, r.choice(STYLES))
        if sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    return sentences


def write_demo_corpus(path: Path, count: int, seed: int = 0) -> None:
    """Write ``count`` sentences, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(demo_sentences(count, seed)) + "\n", encoding="utf-8")
