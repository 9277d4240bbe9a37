"""Word lists for the seeded world, shipped here so the sandbox needs no faker and no network.

The mix is deliberate: accents, non-Latin scripts, right-to-left text, emoji (including ZWJ
sequences and flags) and names with nothing usable in them are exactly what breaks
mappings that were only ever tried on "Jane Doe".
"""

from __future__ import annotations

# (display, romanized) pairs; romanized parts build the ASCII usernames X requires.
NamePart = tuple[str, str]

FIRST_LAST: dict[str, tuple[list[NamePart], list[NamePart], str]] = {
    # language: (first names, last names, how to join: "western" | "eastern" | "eastern-nospace")
    "en": (
        [
            (n, n)
            for n in [
                "James",
                "Emily",
                "Michael",
                "Sarah",
                "David",
                "Olivia",
                "Chris",
                "Hannah",
                "Ryan",
                "Megan",
                "Tyler",
                "Jessica",
                "Brandon",
                "Ashley",
                "Kevin",
                "Laura",
                "Dylan",
                "Grace",
            ]
        ],
        [
            (n, n.replace("'", ""))
            for n in [
                "Smith",
                "Johnson",
                "Walker",
                "O'Brien",
                "Nguyen",
                "Patel",
                "Thompson",
                "Miller",
                "Davis",
                "Clarke",
                "Murphy",
                "Bennett",
                "Reyes",
                "Okafor",
            ]
        ],
        "western",
    ),
    "fr": (
        [
            ("Amélie", "amelie"),
            ("Émile", "emile"),
            ("Hélène", "helene"),
            ("François", "francois"),
            ("Chloé", "chloe"),
            ("Léa", "lea"),
            ("Théo", "theo"),
            ("Zoé", "zoe"),
            ("Jérôme", "jerome"),
            ("Céline", "celine"),
            ("Benoît", "benoit"),
            ("Noémie", "noemie"),
        ],
        [
            ("Lefèvre", "lefevre"),
            ("Dubois", "dubois"),
            ("Moreau", "moreau"),
            ("Girard", "girard"),
            ("Lambert", "lambert"),
            ("Bérenger", "berenger"),
            ("Rousseau", "rousseau"),
            ("Fournier", "fournier"),
            ("Mercier", "mercier"),
            ("Gauthier", "gauthier"),
        ],
        "western",
    ),
    "es": (
        [
            ("José", "jose"),
            ("María", "maria"),
            ("Lucía", "lucia"),
            ("Sofía", "sofia"),
            ("Álvaro", "alvaro"),
            ("Martín", "martin"),
            ("Inés", "ines"),
            ("Raúl", "raul"),
            ("Andrés", "andres"),
            ("Paula", "paula"),
        ],
        [
            ("García", "garcia"),
            ("Fernández", "fernandez"),
            ("López", "lopez"),
            ("Martínez", "martinez"),
            ("Núñez", "nunez"),
            ("Pérez", "perez"),
            ("Sánchez", "sanchez"),
            ("Gómez", "gomez"),
            ("Ibáñez", "ibanez"),
            ("Rodríguez", "rodriguez"),
        ],
        "western",
    ),
    "de": (
        [
            ("Jürgen", "juergen"),
            ("Lena", "lena"),
            ("Jonas", "jonas"),
            ("Mia", "mia"),
            ("Lukas", "lukas"),
            ("Anja", "anja"),
            ("Matthias", "matthias"),
            ("Katrin", "katrin"),
            ("Sören", "soeren"),
            ("Jörg", "joerg"),
        ],
        [
            ("Müller", "mueller"),
            ("Schröder", "schroeder"),
            ("Weiß", "weiss"),
            ("Becker", "becker"),
            ("Hoffmann", "hoffmann"),
            ("Schäfer", "schaefer"),
            ("Köhler", "koehler"),
            ("Wagner", "wagner"),
            ("Groß", "gross"),
            ("Krüger", "krueger"),
        ],
        "western",
    ),
    "pt": (
        [
            ("João", "joao"),
            ("Ana", "ana"),
            ("Luís", "luis"),
            ("Beatriz", "beatriz"),
            ("Gonçalo", "goncalo"),
            ("Mariana", "mariana"),
            ("Thiago", "thiago"),
            ("Larissa", "larissa"),
            ("Sebastião", "sebastiao"),
        ],
        [
            ("Silva", "silva"),
            ("Santos", "santos"),
            ("Oliveira", "oliveira"),
            ("Sousa", "sousa"),
            ("Gonçalves", "goncalves"),
            ("Araújo", "araujo"),
            ("Magalhães", "magalhaes"),
            ("Brandão", "brandao"),
            ("Simões", "simoes"),
        ],
        "western",
    ),
    "ja": (
        [
            ("花子", "hanako"),
            ("太郎", "taro"),
            ("美咲", "misaki"),
            ("翔太", "shota"),
            ("陽菜", "hina"),
            ("健", "ken"),
            ("さくら", "sakura"),
            ("蓮", "ren"),
        ],
        [
            ("山田", "yamada"),
            ("佐藤", "sato"),
            ("鈴木", "suzuki"),
            ("高橋", "takahashi"),
            ("田中", "tanaka"),
            ("伊藤", "ito"),
            ("渡辺", "watanabe"),
            ("中村", "nakamura"),
        ],
        "eastern",
    ),
    "zh": (
        [
            ("伟", "wei"),
            ("芳", "fang"),
            ("静", "jing"),
            ("磊", "lei"),
            ("婷", "ting"),
            ("明", "ming"),
            ("晓燕", "xiaoyan"),
            ("志强", "zhiqiang"),
        ],
        [
            ("王", "wang"),
            ("李", "li"),
            ("张", "zhang"),
            ("刘", "liu"),
            ("陈", "chen"),
            ("杨", "yang"),
            ("黄", "huang"),
            ("赵", "zhao"),
        ],
        "eastern-nospace",
    ),
    "ar": (
        [
            ("محمد", "mohamed"),
            ("فاطمة", "fatima"),
            ("أحمد", "ahmed"),
            ("ليلى", "layla"),
            ("يوسف", "youssef"),
            ("نور", "nour"),
            ("عمر", "omar"),
            ("مريم", "mariam"),
        ],
        [
            ("العلي", "alali"),
            ("حداد", "haddad"),
            ("الحسن", "alhassan"),
            ("منصور", "mansour"),
            ("خليل", "khalil"),
            ("الشامي", "alshami"),
        ],
        "western",
    ),
    "hi": (
        [
            ("आरव", "aarav"),
            ("प्रिया", "priya"),
            ("अनन्या", "ananya"),
            ("रोहन", "rohan"),
            ("विवेक", "vivek"),
            ("नेहा", "neha"),
            ("अर्जुन", "arjun"),
            ("कविता", "kavita"),
        ],
        [
            ("शर्मा", "sharma"),
            ("वर्मा", "verma"),
            ("गुप्ता", "gupta"),
            ("सिंह", "singh"),
            ("पटेल", "patel"),
            ("कुमार", "kumar"),
        ],
        "western",
    ),
}

# Russian surnames are gendered, so whole names are listed rather than combined.
RUSSIAN_NAMES: list[NamePart] = [
    ("Алексей Смирнов", "aleksey_smirnov"),
    ("Мария Иванова", "maria_ivanova"),
    ("Дмитрий Кузнецов", "dkuznetsov"),
    ("Анна Попова", "anna_popova"),
    ("Сергей Волков", "svolkov"),
    ("Ольга Соколова", "olga_sokolova"),
    ("Иван Петров", "ivan_petrov"),
    ("Екатерина Морозова", "kmorozova"),
    ("Никита Лебедев", "nlebedev"),
    ("Татьяна Новикова", "tnovikova"),
]

LANGUAGE_WEIGHTS: dict[str, int] = {
    "en": 34,
    "fr": 12,
    "es": 10,
    "de": 8,
    "pt": 7,
    "ja": 7,
    "zh": 5,
    "ar": 6,
    "hi": 6,
    "ru": 5,
}

EMOJI = ["🚀", "🌊", "✨", "☕", "🔥", "🌸", "📈", "👩🏽‍💻", "🏳️‍🌈", "🇫🇷", "🇯🇵", "🇧🇷", "🇩🇪", "💙"]

# Display names with nothing a CRM can use as a person's name.
UNUSABLE_NAMES = ["🦊", ".", "_", "🙃🙃", "...", "ㅤ", "🌸🌸🌸", "-"]

ORG_NAMES: list[NamePart] = [
    ("DevOps Daily", "devopsdaily"),
    ("Bâtiplus SAS", "batiplus"),
    ("Müller & Söhne GmbH", "muellersoehne"),
    ("Nube Latina", "nubelatina"),
    ("クラウド研究会", "cloudken"),
    ("Finlytics", "finlytics"),
]

BIOS: dict[str, list[str]] = {
    "en": [
        "CTO @ Finlytics. Opinions my own.",
        "Platform engineer. Coffee, k8s, bikes.",
        "Building things on the internet since 1999",
        "Head of IT at a 200-person logistics co.",
        "Founder, tiny SaaS. DMs open.",
        "SRE | on-call survivor 🫠",
        "",
        "Reach me: {email}",
    ],
    "fr": [
        "Ingénieure cloud chez Bâtiplus",
        "DSI d'une PME lyonnaise. Café ☕ et RGPD.",
        "Développeur freelance — devis sur demande",
        "Contact pro : {email}",
    ],
    "es": [
        "Fundadora de una startup en Madrid 🚀",
        "Arquitecto de soluciones. Opiniones propias.",
        "Compras TI en una aseguradora",
    ],
    "de": [
        "Leiter IT bei einem Mittelständler",
        "Softwareentwickler aus München",
        "Kontakt: {email}",
    ],
    "pt": ["Engenheira de dados em São Paulo", "CTO da Nube Latina", "Gestor de TI 🇧🇷"],
    "ja": ["インフラエンジニア。クラウドとコーヒーが好き", "スタートアップのCTOです"],
    "zh": ["云计算架构师", "创业中，欢迎交流"],
    "ar": ["مهندس برمجيات في دبي", "مديرة تقنية المعلومات في شركة ناشئة"],
    "hi": ["सॉफ्टवेयर इंजीनियर, बेंगलुरु", "स्टार्टअप संस्थापक"],
    "ru": ["DevOps-инженер", "Руководитель ИТ-отдела"],
}

LOCATIONS: dict[str, list[str]] = {
    "en": [
        "Austin, TX",
        "London",
        "Remote",
        "🌍",
        "San Francisco Bay Area",
        "Toronto, Ontario",
        "",
    ],
    "fr": ["Paris, France", "Lyon", "Montréal, Québec", "Bordeaux 🍷"],
    "es": ["Madrid", "Ciudad de México", "Buenos Aires, Argentina", "Bogotá"],
    "de": ["München", "Berlin", "Wien, Österreich", "Zürich"],
    "pt": ["São Paulo, Brasil", "Lisboa", "Rio de Janeiro"],
    "ja": ["東京都渋谷区", "大阪", "Tokyo, Japan"],
    "zh": ["北京", "上海", "深圳"],
    "ar": ["دبي", "الرياض", "Cairo, Egypt"],
    "hi": ["मुंबई", "Bengaluru, India", "नई दिल्ली"],
    "ru": ["Москва", "Санкт-Петербург"],
}

MENTIONS: dict[str, list[str]] = {
    "en": [
        "@{brand} how much is the pro plan?",
        "@{brand} is there an annual discount for teams of 50?",
        "@{brand} your status page says all green but our deploys are failing 😤",
        "Loving the new dashboard from @{brand} 🚀",
        "@{brand} do you support SSO with Okta?",
        "Anyone tried @{brand} for multi-region backups?",
        "@{brand} can we get a demo next week?",
        "@{brand} thanks for the quick fix!",
        "Switched our whole stack to @{brand} last month, no regrets",
        "@{brand} pricing page is confusing — is egress included? https://t.co/Pq7xR2mLk9",
        "@{brand} @awscloud which is cheaper for GPU workloads?",
        "@{brand} 👀",
    ],
    "fr": [
        "@{brand} on cherche un devis pour 200 postes, qui contacter ?",
        "Bravo @{brand} pour la nouvelle région à Paris 🇫🇷",
        "@{brand} est-ce que l'hébergement est conforme RGPD ?",
        "@{brand} panne depuis ce matin ?",
    ],
    "es": [
        "@{brand} ¿tienen precios para startups?",
        "Muy contenta con el soporte de @{brand} 🙌",
        "@{brand} ¿cuánto cuesta el plan empresarial?",
    ],
    "de": [
        "@{brand} gibt es ein Angebot für Schulen?",
        "@{brand} Rechenzentrum in Frankfurt? Wegen DSGVO",
        "Danke @{brand}, läuft wieder 👍",
    ],
    "pt": [
        "@{brand} vocês têm plano para ONGs?",
        "Obrigado @{brand} pelo suporte! 🇧🇷",
        "@{brand} qual o preço do plano pro?",
    ],
    "ja": ["@{brand} 料金プランについて教えてください", "@{brand} の新機能すごい！"],
    "zh": ["@{brand} 请问企业版怎么收费？", "@{brand} 服务很稳定，赞👍"],
    "ar": ["@{brand} هل يوجد خصم للشركات الناشئة؟", "شكراً @{brand} على الدعم السريع 🙏"],
    "hi": ["@{brand} प्रो प्लान की कीमत क्या है?", "@{brand} बहुत बढ़िया सर्विस 👏"],
    "ru": ["@{brand} сколько стоит тариф Pro?", "@{brand} у вас есть дата-центр в Европе?"],
}

REPLIES: dict[str, list[str]] = {
    "en": [
        "Is this available in the EU region?",
        "Finally! 🎉",
        "need this for my team, how do I buy?",
        "👀",
        "🔥🔥🔥",
        "+1",
        "When will this be GA?",
        "We'd like a quote for 30 seats",
        "Does this work with Terraform?",
    ],
    "fr": ["Quel est le prix ?", "Génial, merci !", "Disponible pour les associations ?"],
    "es": ["¿Cuándo llega a México?", "¡Qué buena noticia!"],
    "de": ["Wie sieht es mit der Preisgestaltung aus?", "Super, danke!"],
    "pt": ["Quando chega no Brasil?", "Top demais!"],
    "ja": ["これは無料プランでも使えますか？"],
    "zh": ["什么时候支持香港区域？"],
    "ar": ["متى سيتوفر في الشرق الأوسط؟"],
    "hi": ["क्या यह भारत में उपलब्ध है?"],
    "ru": ["Когда будет в России?"],
}

QUOTES: dict[str, list[str]] = {
    "en": [
        "This is exactly what we needed 👇",
        "Big if true. Pricing?",
        "Our team has been waiting for this",
        "Hot take: this changes the on-call game",
    ],
    "fr": ["On attendait ça depuis longtemps !", "Enfin ! Quel tarif pour les PME ?"],
    "es": ["Muy buena noticia para LATAM", "¿Alguien lo probó ya?"],
    "de": ["Endlich!", "Klingt gut, aber was kostet das?"],
    "pt": ["Finalmente! Quanto custa?"],
    "ja": ["これは良い"],
    "zh": ["终于来了"],
    "ar": ["ممتاز"],
    "hi": ["यह शानदार है"],
    "ru": ["Наконец-то!"],
}

BRAND_POSTS = [
    "Introducing Acme Edge Functions: deploy to 30+ regions in seconds 🚀",
    "We're live in São Paulo! 🇧🇷 New region, same low latency.",
    "New: SSO for every Team plan, no upsell.",
    "Our Q4 reliability report is out: 99.995% across all regions.",
    "Join our webinar on cloud cost optimization this Thursday.",
    "Nouveau : la région Paris est disponible 🇫🇷",
    "Managed Postgres 17 is now generally available.",
    "What should we build next? Reply with your wishlist 👇",
    "Incident update: elevated error rates in eu-west are resolved. Post-mortem soon.",
    "Free tier now includes 2 vCPU and 4 GB RAM.",
    "Customer story: how Finlytics cut their bill by 40%.",
    "Terraform provider v3 is here.",
    "¡Hola México! Nueva región en Querétaro.",
    "Neu: Rechenzentrum in Frankfurt, DSGVO-konform.",
    "Tip: use budgets + alerts to never be surprised by a bill again.",
]
