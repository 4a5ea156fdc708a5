"""Sentences an embedder is measured on once, when it is loaded: no knobs tuned by hand.

`PARAPHRASES`: English sentence, an English paraphrase, and its Chinese translation — how far
apart an embedder puts paraphrases and unrelated sentences, and how well it matches a
Chinese sentence to its English translation (`retrieval.EmbedderProfile`).

`PARALLEL`: English–Chinese translation pairs on everyday and workplace topics, written for
this purpose and unrelated to any evaluation set. A multilingual embedder places text of one
language near other text of that language, whatever it says; the mean vector of each side is
that language's offset, which `embeddings.LanguageNeutral` takes off (Libovický et al.,
"On the Language Neutrality of Pre-trained Multilingual Representations", 2020).

Data only; nothing here embeds.
"""

from __future__ import annotations

PARAPHRASES = (
    ("The cat is sleeping on the sofa.", "A cat naps on the couch.", "猫在沙发上睡觉。"),
    ("How much does a train ticket cost?", "What is the price of a railway ticket?", "火车票多少钱？"),
    ("The meeting was moved to Friday afternoon.", "The meeting now takes place on Friday after lunch.",
     "会议改到了星期五下午。"),
    ("Water boils at one hundred degrees Celsius.", "At 100 degrees water starts to boil.", "水在一百摄氏度时沸腾。"),
    ("Please close the window, it is cold.", "Shut the window please, it's chilly.", "请把窗户关上，太冷了。"),
    ("The company hired twenty new engineers this year.", "This year the firm took on 20 more engineers.",
     "公司今年招聘了二十名新工程师。"),
)

PARALLEL = (
    ("It rained all morning, so the football match was postponed.", "上午一直下雨，所以足球比赛推迟了。"),
    ("My grandmother grows tomatoes and peppers in her garden.", "我奶奶在花园里种西红柿和辣椒。"),
    ("The library closes at nine o'clock on weekdays.", "图书馆工作日晚上九点关门。"),
    ("Can you recommend a good restaurant near the station?", "你能推荐一家车站附近的好餐馆吗？"),
    ("The flight was delayed by two hours because of fog.", "由于大雾，航班延误了两个小时。"),
    ("She practises the piano for an hour every evening.", "她每天晚上练一个小时钢琴。"),
    ("Our team finished the quarterly report ahead of schedule.", "我们团队提前完成了季度报告。"),
    ("The new software update fixed the login problem.", "新的软件更新修复了登录问题。"),
    ("Prices of vegetables went up sharply last month.", "上个月蔬菜价格大幅上涨。"),
    ("He forgot his umbrella on the bus.", "他把雨伞忘在公交车上了。"),
    ("The museum offers free entry on the first Sunday of each month.", "博物馆每月第一个星期日免费开放。"),
    ("Remember to back up your files before installing the system.", "安装系统之前记得备份文件。"),
    ("The doctor told him to drink more water and rest.", "医生叫他多喝水、多休息。"),
    ("The children built a snowman in the park.", "孩子们在公园里堆了一个雪人。"),
    ("Our internet connection has been slow since yesterday.", "从昨天开始我们的网速一直很慢。"),
    ("The manager approved the budget for the new project.", "经理批准了新项目的预算。"),
    ("This bridge was built more than a hundred years ago.", "这座桥是一百多年前建的。"),
    ("I usually take the subway to work.", "我通常坐地铁上班。"),
    ("The printer on the third floor is out of paper.", "三楼的打印机没纸了。"),
    ("Fresh bread is baked here every morning.", "这里每天早上都烤新鲜面包。"),
    ("The contract must be signed by both parties.", "合同必须由双方签字。"),
    ("Students who miss the exam can take it again in August.", "错过考试的学生可以在八月补考。"),
    ("The river flooded several villages after the storm.", "暴风雨过后，河水淹没了几个村庄。"),
    ("Turn off the lights when you leave the room.", "离开房间时请关灯。"),
    ("The hotel room had a beautiful view of the sea.", "酒店房间可以看到美丽的海景。"),
    ("Sales in the northern region fell by ten percent.", "北方地区的销售额下降了百分之十。"),
    ("The password must contain at least eight characters.", "密码至少要包含八个字符。"),
    ("We are looking for volunteers to help at the festival.", "我们正在招募节日志愿者。"),
    ("The train to Shanghai leaves from platform four.", "开往上海的火车从四号站台出发。"),
    ("Customers can return the product within thirty days.", "顾客可以在三十天内退货。"),
    ("The scientist published her results in a journal.", "这位科学家在期刊上发表了她的研究结果。"),
    ("Please send me the slides after the presentation.", "演讲结束后请把幻灯片发给我。"),
    ("The battery lasts about ten hours on a single charge.", "电池充满一次电大约能用十个小时。"),
    ("The factory reduced its energy use by installing solar panels.", "工厂安装太阳能板后降低了能耗。"),
    ("Traffic is heavy on the highway during the holidays.", "节假日高速公路上车很多。"),
    ("The old server will be shut down next week.", "旧服务器下周将被关闭。"),
    ("Our dog barks whenever someone rings the doorbell.", "只要有人按门铃，我们家的狗就会叫。"),
    ("The recipe needs two eggs and a cup of flour.", "这个食谱需要两个鸡蛋和一杯面粉。"),
    ("The committee will announce its decision on Monday.", "委员会将在星期一宣布决定。"),
    ("Most of the staff prefer working from home on Fridays.", "大部分员工更喜欢周五在家办公。"),
)
